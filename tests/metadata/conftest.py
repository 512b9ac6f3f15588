"""The metadata store's conformance kit: every store test runs on SQLite and on a real
PostgreSQL (Debian's, started here in a temporary directory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.services.metadata.store import MetadataStore


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
