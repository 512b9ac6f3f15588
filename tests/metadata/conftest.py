"""The metadata store's conformance kit: every store test runs on SQLite and on a real
PostgreSQL (Debian's, started here in a temporary directory)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flotilla.services.metadata.store import MetadataStore


@pytest.fixture
def store(db_url: str) -> Iterator[MetadataStore]:
    s = MetadataStore.open(db_url)
    yield s
    s.engine.dispose()
