"""The metadata database: SQLAlchemy Core tables, engine set-up for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Column, ForeignKey, MetaData, String, Table, Text, create_engine, event
from sqlalchemy.engine import Engine

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


def open_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL survives a killed process (the OS holds the pages); only a
            # power loss can drop the last transactions.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    meta.create_all(engine)
    return engine
