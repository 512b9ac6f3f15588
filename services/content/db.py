"""The ownership records: which namespace holds which blob, with labels and leases.

SQLite in WAL mode under ``<root>/content/`` (several instances share it). Every write
transaction is ``BEGIN IMMEDIATE`` so a commit (rename into blobs/ + insert) and a delete
(delete + unlink of the last owner's blob) never interleave, even across processes.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text
from sqlalchemy.engine import Engine

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


def open_engines(path: Path) -> tuple[Engine, Engine]:
    """(writer, reader): see libs/sqlite.py."""
    return open_sqlite(path, meta)
