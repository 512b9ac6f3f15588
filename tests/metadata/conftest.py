"""The metadata store's conformance kit: every store test runs on SQLite and on a real
PostgreSQL (Debian's, started here in a temporary directory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.services.metadata.store import MetadataStore

from flotilla.testing.postgres import PostgresServer, available


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if not available():
        pytest.fail("Debian's postgresql 15 is required for the metadata suite")
    with PostgresServer() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(db_url: str) -> Iterator[MetadataStore]:
    s = MetadataStore.open(db_url)
    yield s
    s.engine.dispose()
