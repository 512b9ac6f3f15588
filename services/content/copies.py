"""A farm's copies of blob bytes: which hosts hold one, is this host's right, which to make
and which to drop; no NATS here (services/content/farm.py moves the bytes).

Every host keeps its copies under its own ``<root>/content/blobs``, recorded in the farm's
database (``db.copies``) with the file's stamp as it was verified. A copy whose file no
longer has that stamp is hashed again before it is served, and dropped if it is wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Table, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from flotilla.libs.errors import NotFound

from . import db
from .ingest import file_digest

if TYPE_CHECKING:
    from .store import ContentStore

log = logging.getLogger(__name__)

# containerd's remotes.MakeRefKey: an ingest a pull makes from a registry, which can fetch
# its bytes again; one farm copy of those is enough
_REGISTRY_REF = re.compile(r"^(manifest|index|layer|config|unknown|attestation-manifest)-[a-z0-9]+:[0-9a-f]+$")
RECENT = 60.0   # seconds a copy just read stays (an unpack may still be opening it)


def from_registry(ref: str) -> bool:
    return bool(_REGISTRY_REF.match(ref))


def stamp_of(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def rank(host: str, key: str) -> bytes:
    """Rendezvous order: every host ranks the candidates for ``key`` alike."""
    return hashlib.sha256(f"{host}/{key}".encode()).digest()


def _dialect(conn: Connection):  # type: ignore[no-untyped-def]
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def _upsert(conn: Connection, table: Table, values: dict[str, object], keys: list[str],
            changes: dict[str, object]) -> None:
    conn.execute(_dialect(conn).insert(table).values(**values).on_conflict_do_update(index_elements=keys, set_=changes))


def _hold(conn: Connection, host: str, digest: str, size: int, stamp: str) -> None:
    """``host`` holds a verified copy of ``digest`` whose file has ``stamp``."""
    now = int(time.time())
    _upsert(conn, db.copies, dict(digest=digest, host=host, size=size, stamp=stamp, used_at=now),
            ["digest", "host"], {"stamp": stamp, "used_at": now})


def _farm_has(conn: Connection, digest: str) -> bool:
    return conn.execute(select(db.blobs.c.digest).where(db.blobs.c.digest == digest)).first() is not None


def record_blob(conn: Connection, host: str, digest: str, size: int, path: Path, wanted: int) -> None:
    """In a commit's transaction: the farm has ``digest`` (held by ``wanted`` hosts at
    least), and ``host`` a verified copy at ``path`` if it is there."""
    stmt = _dialect(conn).insert(db.blobs).values(digest=digest, size=size, wanted=wanted)
    bigger = (func.greatest if conn.dialect.name == "postgresql" else func.max)(stmt.excluded.wanted, db.blobs.c.wanted)
    conn.execute(stmt.on_conflict_do_update(index_elements=["digest"], set_={"wanted": bigger}))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    _hold(conn, host, digest, size, stamp_of(st))


@dataclass(frozen=True)
class BlobCopies:
    """A blob of the farm, how many hosts must hold it, and the hosts that do."""
    digest: str
    size: int
    wanted: int
    holders: tuple[str, ...]


class Copies:
    """This host's side of the farm's copies, on its store's records and disk."""

    def __init__(self, store: "ContentStore", clean: bool = True) -> None:
        self.store, self.engine, self.host = store, store.engine, store.host
        self.incoming = store.root / "incoming"  # copies being received, verified before they go in
        self.incoming.mkdir(parents=True, exist_ok=True)
        for old in self.incoming.iterdir() if clean else ():  # a killed instance's
            old.unlink(missing_ok=True)
        self._stamps: dict[str, str] = {}    # digest -> stamp of a copy verified here
        self._touched: dict[str, float] = {}

    # -- what the farm has -------------------------------------------------------------

    def blob(self, digest: str) -> BlobCopies | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(db.blobs).where(db.blobs.c.digest == digest)).first()
            holders = tuple(r[0] for r in conn.execute(select(db.copies.c.host).where(db.copies.c.digest == digest)))
        if row is None:
            return None
        return BlobCopies(digest, row.size, row.wanted, holders)

    def blobs(self, short_of: Collection[str] | None = None) -> list[BlobCopies]:
        """The farm's blobs; with ``short_of`` (the hosts not lost), those that fewer of
        them hold than the blob wants (the database counts: most blobs are not)."""
        b, c = db.blobs, db.copies
        joined = b.outerjoin(c, c.c.digest == b.c.digest)
        query = select(b.c.digest, b.c.size, b.c.wanted, c.c.host).select_from(joined)
        if short_of is not None:
            held = func.sum(case((c.c.host.in_(list(short_of)), 1), else_=0))
            short = select(b.c.digest).select_from(joined).group_by(b.c.digest, b.c.wanted) \
                .having(func.coalesce(held, 0) < b.c.wanted)
            query = query.where(b.c.digest.in_(short))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        found: dict[str, BlobCopies] = {}
        for digest, size, wanted, host in rows:
            b = found.get(digest) or BlobCopies(digest, size, wanted, ())
            found[digest] = BlobCopies(digest, size, wanted, b.holders + ((host,) if host else ()))
        return list(found.values())

    # -- this host's copies ------------------------------------------------------------

    def check(self, digest: str, use: bool = False) -> bool:
        """True when this host holds a right copy of ``digest``; a copy whose file changed
        since it was verified is hashed again, and dropped if wrong. ``use``: it is about to
        be read (for the LRU)."""
        right = self._check(digest)
        if right and use:
            self.touch(digest)
        return right

    def read(self, digest: str, offset: int, size: int) -> bytes:
        """Bytes of this host's right copy (another host asks: never a wrong one)."""
        if not self._check(digest):
            raise NotFound(f"content {digest}: no right copy on host {self.host}: not found")
        with open(self.store.blob_path(digest), "rb") as f:
            return os.pread(f.fileno(), size, offset)

    def reconcile(self) -> None:
        """At start: records of this host's copies whose file is gone go (a disk replaced,
        a data directory removed)."""
        with self.engine.begin() as conn:
            mine = [r[0] for r in conn.execute(select(db.copies.c.digest).where(db.copies.c.host == self.host))]
            gone = [d for d in mine if not self.store.blob_path(d).exists()]
            for digest in gone:
                conn.execute(delete(db.copies).where(self._mine(digest)))
        if gone:
            log.info("%d copies recorded for this host have no file: forgotten", len(gone))

    def _check(self, digest: str) -> bool:
        path = self.store.blob_path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        stamp = stamp_of(st)
        if self._stamps.get(digest) == stamp:
            return True
        with self.engine.connect() as conn:
            row = conn.execute(select(db.copies.c.stamp, db.copies.c.size).where(
                self._mine(digest))).first()
        if row is not None and row.stamp == stamp:
            self._stamps[digest] = stamp
            return True
        # changed since it was verified, or not recorded (another thread's copy between its
        # rename and its record, or a leftover): its bytes decide
        if file_digest(path, row.size if row is not None else st.st_size) == digest:
            return self._record(digest, st.st_size, stamp)
        log.warning("copy of %s on this host is corrupt: dropped", digest)
        self.drop(digest, stamp)
        return False

    def _record(self, digest: str, size: int, stamp: str) -> bool:
        """A right file at the blob's path is this host's copy, if the farm still has the blob."""
        with self.engine.begin() as conn:
            db.lock_digest(conn, digest)
            if not _farm_has(conn, digest):
                self.store.blob_path(digest).unlink(missing_ok=True)
                return False
            _hold(conn, self.host, digest, size, stamp)
        self._stamps[digest] = stamp
        return True

    def drop(self, digest: str, stamp: str = "") -> None:
        """This host's copy goes, record and file; with ``stamp``, only the file judged
        (another thread may have put a right one in its place since)."""
        self._stamps.pop(digest, None)
        path = self.store.blob_path(digest)
        with self.engine.begin() as conn:
            db.lock_digest(conn, digest)
            with contextlib.suppress(FileNotFoundError):
                if stamp and stamp_of(os.stat(path)) != stamp:
                    return
            conn.execute(delete(db.copies).where(self._mine(digest)))
            path.unlink(missing_ok=True)

    def _mine(self, digest: str) -> ColumnElement[bool]:
        """Where-clause: this host's copy of ``digest``."""
        return (db.copies.c.digest == digest) & (db.copies.c.host == self.host)

    def incoming_file(self) -> Path:
        return self.incoming / uuid.uuid4().hex

    def admit(self, tmp: Path, digest: str, size: int) -> bool:
        """The verified bytes at ``tmp`` become this host's copy; False (and gone) if the
        blob was deleted meanwhile."""
        target = self.store.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.engine.begin() as conn:
            db.lock_digest(conn, digest)
            if not _farm_has(conn, digest):
                tmp.unlink(missing_ok=True)
                return False
            stamp = stamp_of(os.stat(tmp))  # a rename keeps inode and mtime
            _hold(conn, self.host, digest, size, stamp)
            os.rename(tmp, target)
        self._stamps[digest] = stamp
        return True

    def touch(self, digest: str) -> None:
        """``digest`` was just used here (for the LRU; written at most once a minute)."""
        now = time.monotonic()
        if now - self._touched.get(digest, -RECENT) < RECENT:
            return
        self._touched[digest] = now
        with self.engine.begin() as conn:
            conn.execute(update(db.copies).where(self._mine(digest))
                         .values(used_at=int(time.time())))

    def forget(self, digest: str) -> None:
        """The farm deleted ``digest``: this host's file goes too, unless it is back."""
        with self.engine.begin() as conn:
            db.lock_digest(conn, digest)
            if not _farm_has(conn, digest):
                self.store.blob_path(digest).unlink(missing_ok=True)
                self._stamps.pop(digest, None)

    def evictable(self, budget: int, present: Callable[[str], bool]) -> list[str]:
        """This host's copies to drop, least recently used first, until what it keeps fits
        ``budget``: never one the farm needs to hold its factor, one a lease holds (a pull or
        an unpack under way), or one used in the last minute."""
        with self.engine.connect() as conn:
            mine = conn.execute(select(db.copies.c.digest, db.copies.c.size, db.copies.c.used_at)
                                .where(db.copies.c.host == self.host).order_by(db.copies.c.used_at)).all()
            total = sum(r.size for r in mine)
            if total <= budget:
                return []
            leased = {r[0] for r in conn.execute(select(db.owners.c.digest).where(db.owners.c.leases != "[]"))}
        wanted = {b.digest: b for b in self.blobs()}
        out, now = [], time.time()
        for r in mine:
            if total <= budget:
                break
            b = wanted.get(r.digest)
            kept_elsewhere = b is not None and sum(1 for h in b.holders if h != self.host and present(h)) >= b.wanted
            if r.digest in leased or now - r.used_at < RECENT or not kept_elsewhere:
                continue
            out.append(r.digest)
            total -= r.size
        return out

    # -- where ingests live ------------------------------------------------------------

    def place(self, namespace: str, ref: str, live: Collection[str], caller: str) -> str:
        """The host the ingest ``ref`` lives on: where it is while that host lives, else a
        live host other than the caller's (a host lost mid-fetch leaves its bytes behind)."""
        key = (db.places.c.namespace == namespace) & (db.places.c.ref == ref)
        with self.engine.begin() as conn:
            db.lock_digest(conn, f"{namespace}/{ref}")
            row = conn.execute(select(db.places.c.host).where(key)).first()
            if row is not None and row.host in live:
                return str(row.host)
            choices = [h for h in live if h != caller] or [caller]
            host = max(choices, key=lambda h: rank(h, ref))
            if row is not None:
                log.info("ingest %s/%s moves from %s (not up) to %s", namespace, ref, row.host, host)
            _upsert(conn, db.places, dict(namespace=namespace, ref=ref, host=host), ["namespace", "ref"],
                    {"host": host})
        return host

    def placed(self, namespace: str, ref: str) -> str:
        with self.engine.connect() as conn:
            row = conn.execute(select(db.places.c.host).where(
                (db.places.c.namespace == namespace) & (db.places.c.ref == ref))).first()
        return str(row.host) if row else ""

    def unplace(self, namespace: str, ref: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(db.places).where((db.places.c.namespace == namespace) & (db.places.c.ref == ref)
                                                 & (db.places.c.host == self.host)))
