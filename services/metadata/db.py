"""The metadata database: SQLAlchemy Core tables, engine set-up for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (BigInteger, Column, ForeignKey, ForeignKeyConstraint, LargeBinary, MetaData, String,
                        Table, Text, create_engine, inspect, text)
from sqlalchemy.engine import Connection, Engine

from flotilla.libs import postgres
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
# A container belongs to the host whose gateway made it (its snapshot and task live there):
# hosts sharing a database each have their own "default/build".
containers = Table(
    "containers", meta,
    Column("namespace", String(80), primary_key=True),
    Column("host", String(255), primary_key=True, default=""),  # "": a store opened with no host
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
    # containerd's encoding of the record but its spec (libs/api/listed.py); NULL: made
    # before this column, encoded when listed
    Column("listed", LargeBinary, nullable=True),
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
    Column("listed", LargeBinary, nullable=True),  # as the containers'
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


# PostgreSQL advisory lock keys (per database, so per farm); any two constants of our own
GC_LOCK = int.from_bytes(b"flot.gc!", "big")          # a collection (exclusive), writes (shared)
MIGRATE_LOCK = int.from_bytes(b"flot.mig", "big")     # schema upgrades, one host at a time


def open_engine(url: str, host: str = "") -> tuple[Engine, Engine]:
    """(writer, reader): the same engine for PostgreSQL; for SQLite, see libs/sqlite.py.
    ``host`` owns the containers of a database made before containers had one."""
    if url.startswith("sqlite:///"):
        engines = open_sqlite(Path(url[len("sqlite:///"):]), meta, foreign_keys=True, busy_timeout=30)
    else:
        engine = create_engine(url, pool_pre_ping=True, connect_args=postgres.CONNECT_ARGS)
        meta.create_all(engine)
        engines = engine, engine
    _add_container_host(*engines, host)
    _add_listed(*engines)
    return engines


def _has_host(conn: Connection) -> bool:
    return "host" in {c["name"] for c in inspect(conn).get_columns("containers")}


def _add_container_host(engine: Engine, reader: Engine, host: str) -> None:
    """Give a containers table of before hosts its host column, in one transaction; its rows
    go to ``host`` (the metadata instance's own: they were made through it)."""
    with reader.connect() as probe:  # the usual case, without taking SQLite's write lock
        if _has_host(probe):
            return
    with engine.begin() as conn:  # SQLite's writer begins IMMEDIATE: one migrating process
        if engine.dialect.name == "sqlite":
            if _has_host(conn):
                return
            # SQLite cannot change a primary key: rebuild the table under its name
            conn.exec_driver_sql("ALTER TABLE containers RENAME TO containers_unhosted")
            containers.create(conn)
            names = ", ".join(c.name for c in containers.columns if c.name not in ("host", "listed"))
            conn.execute(text(f"INSERT INTO containers (host, {names}) SELECT :host, {names} "
                              "FROM containers_unhosted"), {"host": host})
            conn.exec_driver_sql("DROP TABLE containers_unhosted")
            return
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK})
        if _has_host(conn):  # another host did it while we waited
            return
        quoted = conn.dialect.identifier_preparer.quote
        conn.exec_driver_sql("ALTER TABLE containers ADD COLUMN host VARCHAR(255) NOT NULL DEFAULT ''")
        conn.execute(text("UPDATE containers SET host = :host"), {"host": host})
        conn.exec_driver_sql("ALTER TABLE containers ALTER COLUMN host DROP DEFAULT")
        pkey = inspect(conn).get_pk_constraint("containers")["name"]
        conn.exec_driver_sql(f"ALTER TABLE containers DROP CONSTRAINT {quoted(pkey)}, "
                             "ADD PRIMARY KEY (namespace, host, id)")


def _missing_listed(conn: Connection) -> list[str]:
    found = inspect(conn)
    return [t for t in ("images", "containers") if "listed" not in {c["name"] for c in found.get_columns(t)}]


def _add_listed(engine: Engine, reader: Engine) -> None:
    """Give the images and containers tables of before their ``listed`` column (NULL in
    their rows: listed as before until written again)."""
    with reader.connect() as probe:
        if not _missing_listed(probe):
            return
    with engine.begin() as conn:
        if engine.dialect.name != "sqlite":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK})
        blob = "BLOB" if engine.dialect.name == "sqlite" else "BYTEA"
        for table in _missing_listed(conn):  # another process may have done it meanwhile
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN listed {blob}")
