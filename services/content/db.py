"""The ownership records: which namespace holds which blob, with labels and leases.

SQLite in WAL mode under ``<root>/content/`` (several instances share it). Every write
transaction is ``BEGIN IMMEDIATE`` so a commit (rename into blobs/ + insert) and a delete
(delete + unlink of the last owner's blob) never interleave, even across processes.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text, create_engine, event
from sqlalchemy.engine import Engine

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


def open_engines(path: Path) -> tuple[Engine, Engine]:
    """(writer, reader): the writer's transactions take SQLite's write lock up front."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    meta.create_all(engine)
    return engine, engine.execution_options(isolation_level="AUTOCOMMIT")
