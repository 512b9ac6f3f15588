"""The content store's records: which namespace owns which blob (labels, leases), and on a
farm which hosts hold a copy of its bytes.

One host: SQLite in WAL mode under ``<root>/content/`` (several instances share it); every
write transaction is ``BEGIN IMMEDIATE`` so a commit (rename into blobs/ + insert) and a
delete (delete + unlink of the last owner's blob) never interleave, even across processes.
A farm: one PostgreSQL database (``FLOTILLA_CONTENT_DB_URL``); the same pairs are kept apart
by a transaction-scoped advisory lock on the digest (``lock_digest``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger, Column, Integer, MetaData, String, Table, Text, bindparam, create_engine, insert, select, text, update,
)
from sqlalchemy.engine import Connection, Engine

from flotilla.libs import postgres
from flotilla.libs.sqlite import open_sqlite

meta = MetaData()

owners = Table(
    "owners", meta,
    Column("namespace", String(80), primary_key=True),
    Column("digest", String(200), primary_key=True, index=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("labels", Text, nullable=False, default="{}"),   # JSON object
    Column("leases", Text, nullable=False, default="[]"),   # JSON list of lease ids
)

# -- a farm's (empty on one host) ------------------------------------------------------

# the blobs of the farm and how many hosts must hold each (1: it can be fetched again)
blobs = Table(
    "content_blobs", meta,
    Column("digest", String(200), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("wanted", Integer, nullable=False),
)

# a verified copy of a blob's bytes on a host's disk
copies = Table(
    "content_copies", meta,
    Column("digest", String(200), primary_key=True),
    Column("host", String(80), primary_key=True, index=True),
    Column("size", BigInteger, nullable=False),
    Column("stamp", String(80), nullable=False, default=""),   # the file as verified: "ino:mtime_ns:size"
    Column("used_at", BigInteger, nullable=False, default=0),  # s since the epoch, for the LRU
)

# the host an ingest lives on: every writer of the ref, on any host, is sent there
places = Table(
    "content_places", meta,
    Column("namespace", String(80), primary_key=True),
    Column("ref", String(400), primary_key=True),
    Column("host", String(80), nullable=False),
)


# -- statements built once: composing one per call costs more than the query (on every Info)
OWNER_ROW = select(owners).where((owners.c.namespace == bindparam("namespace"))
                                 & (owners.c.digest == bindparam("digest")))
OWNER_ROW_FOR_UPDATE = OWNER_ROW.with_for_update()
OWNERS = select(owners).where(owners.c.digest == bindparam("digest"))
HELD = select(copies.c.host).where(copies.c.digest == bindparam("digest")).limit(1)
INSERT_OWNER = insert(owners)
# one owner row; the columns it sets are the parameters given with it (labels, or leases)
UPDATE_OWNER = update(owners).where((owners.c.namespace == bindparam("b_namespace"))
                                    & (owners.c.digest == bindparam("b_digest")))
# the records whose leases (a JSON list) may hold one: a prefilter, the list itself decides
LEASED = select(owners.c.digest, owners.c.leases).where(
    (owners.c.namespace == bindparam("namespace"))
    & owners.c.leases.contains(bindparam("lease_json"), escape="\\"))
IN_NAMESPACE = select(owners.c.digest, owners.c.leases).where(owners.c.namespace == bindparam("namespace"))
LIKE_MAX = 50_000  # bytes: SQLite refuses a longer LIKE pattern


def open_engines(path: Path, url: str = "") -> tuple[Engine, Engine]:
    """(writer, reader): SQLite at ``path`` (see libs/sqlite.py), or the database at ``url``."""
    if not url or url.startswith("sqlite:///"):  # (a farm's records in SQLite: its tests)
        return open_sqlite(Path(url[len("sqlite:///"):]) if url else path, meta)
    engine = create_engine(url, pool_pre_ping=True, pool_size=8, connect_args=postgres.CONNECT_ARGS)
    with engine.begin() as conn:  # the farm's hosts start together: one makes the tables
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
        meta.create_all(conn)
    return engine, engine


_SCHEMA_LOCK = int.from_bytes(b"flot.cnt", "big")


def lock_digest(conn: Connection, digest: str) -> None:
    """Serialize this transaction with every other on ``digest`` (SQLite's writer already is)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:d, 0))"), {"d": digest})
