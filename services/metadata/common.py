"""What every part of the metadata store shares: transactions, namespaces on first write,
label maps in rows, containerd's digest and label checks."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
from sqlalchemy import and_, bindparam, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from flotilla.libs import filters
from flotilla.libs.api.content import CONSUMER_NAMESPACE_PREFIX
from flotilla.libs.errors import FailedPrecondition, InvalidArgument
from flotilla.libs.digests import digest_error  # noqa: F401  (used by images and leases)
from flotilla.libs.identifiers import validate_identifier, validate_labels

from . import db

T = TypeVar("T")


def parse_filters(fs: list[str] | None) -> filters.Filter:
    """containerd's stores wrap the parser's error once more: '...: invalid argument: invalid argument'."""
    try:
        return filters.parse(list(fs or []))
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc.message}: invalid argument") from None


def check_labels(labels: dict[str, str], what: str) -> None:
    try:
        validate_labels(labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc.message}") from None


def kept(m: dict[str, str] | None) -> dict[str, str]:
    """containerd never stores a label or annotation with an empty value: it drops it."""
    return {k: v for k, v in (m or {}).items() if v != ""}


def dump_map(m: dict[str, str] | None) -> str:
    return json.dumps(kept(m), separators=(",", ":"), sort_keys=True)


def load_map(text: str | None) -> dict[str, str]:
    return json.loads(text) if text and text != "{}" else {}  # most maps are empty: no parse


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes | None) -> Any:
    return None if data is None else msgpack.unpackb(data, raw=False)


_BATCH = 1000  # rows read per query while paging
# statements on every write's path, built once: composing one per call costs more than the
# SQL (a one-row insert transaction: ~690 us composed per call, ~360 us prebuilt)
_NAMESPACE_EXISTS = select(db.namespaces.c.name).where(db.namespaces.c.name == bindparam("name"))
_NAMESPACE_INSERT = insert(db.namespaces)
# every PostgreSQL write transaction holds this (shared) first: a collection on any host of
# the farm holds it exclusively, so writes wait for it and it waits for writes in progress
_WRITE_LOCK = text("SELECT pg_advisory_xact_lock_shared(:key)").bindparams(key=db.GC_LOCK)


def _keyed_rows(conn: Connection, columns: tuple[Any, ...], key: Any, namespace: str, after: str,
                scope: Any) -> Iterator[tuple[Any, bool]]:
    """The rows of ``namespace`` (and ``scope``) after key ``after``, in key order, read
    _BATCH at a time; each with whether more rows may follow it."""
    table = key.table
    while True:
        query = (select(*columns) if columns else select(table)).where(table.c.namespace == namespace)
        if scope is not None:
            query = query.where(scope)
        if after:
            query = query.where(key > after)
        rows = conn.execute(query.order_by(key).limit(_BATCH)).all()
        last = len(rows) - 1
        for i, row in enumerate(rows):
            yield row, i < last or len(rows) == _BATCH
        if len(rows) < _BATCH:
            return
        after = getattr(rows[-1], key.name)


def page(conn: Connection, table: Any, key: Any, namespace: str, after: str, budget: int,
         decode: Callable[[Any], T], wanted: filters.Filter, lookup: Callable[[T], filters.Lookup],
         size: Callable[[Any], int], scope: Any = None, columns: tuple[Any, ...] = ()) -> tuple[list[T], str]:
    """Records of ``namespace`` (and ``scope``, a further condition) after key ``after``, in
    key order, that ``wanted`` matches (through ``lookup``), until about ``budget`` bytes (0:
    all). Returns them and the key to continue after ("" when done): a list too big for one
    bus message travels in pages. ``columns``: those only, in that order (``decode`` unpacks the row as a tuple,
    faster than by name), else every column of ``table``."""
    out: list[T] = []
    used = 0
    keep = (lambda record: wanted.matches(lookup(record))) if wanted.any_of else None  # none: no call
    for row, more in _keyed_rows(conn, columns, key, namespace, after, scope):
        record = decode(row)
        if keep is None or keep(record):
            out.append(record)
            used += size(row)
            if budget and used >= budget:
                return out, getattr(row, key.name) if more else ""
    return out, ""


def encoded_page(conn: Connection, key: Any, columns: tuple[Any, ...], namespace: str, after: str,
                 budget: int, scope: Any = None) -> tuple[list[Any], str]:
    """Rows of ``columns`` (``key`` first, the record's encoding last) as ``page`` reads
    records, for an unfiltered encoded list: nothing else is read, decoded or walked."""
    out: list[Any] = []
    used = 0
    for row, more in _keyed_rows(conn, columns, key, namespace, after, scope):
        out.append(row)
        used += 200 + len(row[-1] or b"")
        if budget and used >= budget:
            return out, row[0] if more else ""
    return out, ""


def has_unlisted(conn: Connection, table: Any) -> bool:
    """Whether a row of ``table`` has no list encoding (``listed``) yet."""
    return conn.execute(select(table.c.listed).where(table.c.listed.is_(None)).limit(1)).first() is not None


def encode_unlisted(conn: Connection, table: Any, encode: Callable[[Any], bytes]) -> None:
    """Give every row of ``table`` without a list encoding its own (a whole row to ``encode``)."""
    key = list(table.primary_key.columns)
    for row in conn.execute(select(table).where(table.c.listed.is_(None))).all():
        conn.execute(update(table).where(and_(*(c == getattr(row, c.name) for c in key))).values(listed=encode(row)))


def refuse_consumer_namespace(name: str) -> None:
    """A proxy consumer's namespace holds that containerd's blobs, which its own metadata
    keeps: a record of ours there would make our collector judge them (docs/integrators.md)."""
    if name.startswith(CONSUMER_NAMESPACE_PREFIX):
        raise FailedPrecondition(f'namespace "{name}" is a containerd consumer\'s content store '
                                 "(docs/integrators.md): failed precondition")


@dataclass
class Collecting:
    """A collection's hold on the store, so that no write runs meanwhile: with PostgreSQL,
    the session-level advisory lock (exclusive) on a connection of its own, which the
    collection's own writes use (every host of a farm); with SQLite, an exclusive ``flock``
    on the database's gc-lock file, which every write of every process on it holds shared
    (metadata instances on one host). The in-process WriteGate comes first."""
    conn: Connection | None = None
    lock_fd: int = -1


class StoreBase:
    """The engine and its transactions.

    SQLite allows one writer: write transactions begin IMMEDIATE (libs/sqlite.py), which
    makes a read-then-write atomic across processes too, and this process' writers queue
    for the writer engine's one connection. Reads use an autocommit engine that never
    waits for a writer. PostgreSQL takes row locks (``FOR UPDATE``) instead, and the farm's
    collection lock shared (``_WRITE_LOCK``).

    ``host`` is the metadata instance's own: containers asked for with no host are its.
    """

    def __init__(self, engines: tuple[Engine, Engine], host: str = "") -> None:
        self.engine, self.reader = engines
        self.host = host
        self.sqlite = self.engine.dialect.name == "sqlite"
        self.gc_lock_path = f"{self.engine.url.database}.gc-lock" if self.sqlite else ""

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()  # the same engine for PostgreSQL: disposing twice is harmless

    @contextmanager
    def _write(self, held: Collecting | None = None) -> Iterator[Connection]:
        """A write transaction; ``held``: the collection's own write, which must not wait
        for its own lock."""
        if held is not None and held.conn is not None:
            with held.conn.begin():
                yield held.conn
            return
        # SQLite: a collection in another process holds the gc-lock: wait for its end
        gate = self._gc_flock(fcntl.LOCK_SH) if self.sqlite and held is None else -1
        try:
            with self.engine.begin() as conn:
                if not self.sqlite:
                    conn.execute(_WRITE_LOCK)
                yield conn
        finally:
            if gate >= 0:
                os.close(gate)

    def _gc_flock(self, mode: int) -> int:
        """A descriptor of the SQLite database's gc-lock file holding ``mode`` (waited for);
        its close gives the lock back."""
        fd = os.open(self.gc_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.reader.connect() as conn:
            yield conn

    def _ensure_namespace(self, conn: Connection, name: str) -> None:
        """containerd creates a namespace on the first write into it (whose name its API has
        validated: so do we, for callers on the bus)."""
        if conn.execute(_NAMESPACE_EXISTS, {"name": name}).first() is None:
            try:
                validate_identifier(name)
            except InvalidArgument as exc:
                raise InvalidArgument(f"namespace validation: {exc.message}") from None
            refuse_consumer_namespace(name)
            try:
                with conn.begin_nested():
                    conn.execute(_NAMESPACE_INSERT, {"name": name})
            except IntegrityError:  # created by a concurrent writer: fine
                pass
