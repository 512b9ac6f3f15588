"""The snapshot records: one SQLite database per host under <root>/snapshots/.

Every record change is one transaction, so a killed process leaves either the old or the
new record, never half of one. Ids come from AUTOINCREMENT so a removed snapshot's id (and
its directory name) is never handed out again.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text, UniqueConstraint
from sqlalchemy.engine import Engine

from flotilla.libs.sqlite import open_sqlite

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


def open_engines(path: Path) -> tuple[Engine, Engine]:
    """(writer, reader): see libs/sqlite.py."""
    return open_sqlite(path, meta, foreign_keys=True)
