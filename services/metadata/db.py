"""The metadata database: SQLAlchemy Core tables, engine set-up for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (BigInteger, Column, ForeignKey, ForeignKeyConstraint, LargeBinary, MetaData, String,
                        Table, Text, create_engine, event)
from sqlalchemy.engine import Engine

from flotilla.libs.sqlite import open_sqlite

meta = MetaData()

namespaces = Table(
    "namespaces", meta,
    Column("name", String(80), primary_key=True),
)

namespace_labels = Table(
    "namespace_labels", meta,
    Column("namespace", String(80), ForeignKey("namespaces.name", ondelete="CASCADE"),
           primary_key=True),
    Column("key", String(4096), primary_key=True),
    Column("value", Text, nullable=False),
)

# Records keep their maps (labels, annotations, extensions) as JSON/msgpack in the row:
# a list reads one row per record, and filters run in Python with containerd's semantics.
containers = Table(
    "containers", meta,
    Column("namespace", String(80), primary_key=True),
    Column("id", String(80), primary_key=True),
    Column("labels", Text, nullable=False, default="{}"),
    Column("image", Text, nullable=False, default=""),
    Column("runtime_name", Text, nullable=False, default=""),
    Column("runtime_options", LargeBinary, nullable=True),  # msgpack {type_url, value}
    Column("spec", LargeBinary, nullable=True),             # msgpack {type_url, value}
    Column("snapshotter", Text, nullable=False, default=""),
    Column("snapshot_key", Text, nullable=False, default=""),
    Column("extensions", LargeBinary, nullable=False),      # msgpack {name: {type_url, value}}
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

images = Table(
    "images", meta,
    Column("namespace", String(80), primary_key=True),
    Column("name", String(), primary_key=True),
    Column("labels", Text, nullable=False, default="{}"),
    Column("media_type", Text, nullable=False),
    Column("digest", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("annotations", Text, nullable=False, default="{}"),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

leases = Table(
    "leases", meta,
    Column("namespace", String(80), primary_key=True),
    Column("id", String(), primary_key=True),
    Column("labels", Text, nullable=False, default="{}"),
    Column("created_at", BigInteger, nullable=False),
)

lease_resources = Table(
    "lease_resources", meta,
    Column("namespace", String(80), primary_key=True),
    Column("lease", String(), primary_key=True),
    Column("type", String(), primary_key=True),
    Column("rid", String(), primary_key=True),
    ForeignKeyConstraint(["namespace", "lease"], ["leases.namespace", "leases.id"], ondelete="CASCADE"),
)


def open_engine(url: str) -> tuple[Engine, Engine]:
    """(writer, reader): the same engine for PostgreSQL; for SQLite, see libs/sqlite.py."""
    if url.startswith("sqlite:///"):
        return open_sqlite(Path(url[len("sqlite:///"):]), meta, foreign_keys=True, busy_timeout=30)
    engine = create_engine(url, pool_pre_ping=True)
    meta.create_all(engine)
    return engine, engine
