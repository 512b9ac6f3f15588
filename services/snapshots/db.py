"""The snapshot records: one SQLite database per host under <root>/snapshots/.

Every record change is one transaction, so a killed process leaves either the old or the
new record, never half of one. Ids come from AUTOINCREMENT so a removed snapshot's id (and
its directory name) is never handed out again.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (BigInteger, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, create_engine, event)
from sqlalchemy.engine import Engine

meta = MetaData()

snapshots = Table(
    "snapshots", meta,
    Column("id", Integer, primary_key=True),
    Column("namespace", String(80), nullable=False),
    Column("snapshotter", String(40), nullable=False),
    Column("key", Text, nullable=False),
    Column("kind", String(10), nullable=False),
    Column("parent_id", Integer, ForeignKey("snapshots.id"), nullable=True),
    Column("labels", Text, nullable=False, default="{}"),   # JSON object
    Column("leases", Text, nullable=False, default="[]"),   # JSON list of lease ids
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False, default=0),   # usage, fixed at commit
    Column("inodes", BigInteger, nullable=False, default=0),
    UniqueConstraint("namespace", "snapshotter", "key"),
    Index("snapshots_parent", "parent_id"),
    sqlite_autoincrement=True,
)


def open_engine(path: Path, writer: bool = True) -> Engine:
    """The writer's transactions take SQLite's write lock when they begin; the reader's
    statements run in autocommit (WAL readers never wait for the writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60, "check_same_thread": False,
                                                               "isolation_level": None})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    if not writer:
        return engine

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        # take the write lock up front: a check-then-insert is then atomic across threads
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    meta.create_all(engine)
    return engine
