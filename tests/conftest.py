"""Fixtures: real nats-server, a private Flotilla suite and a containerd peer, all in
temporary directories on free ports; each is cleaned up after the run."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flotilla.libs.bus import Bus
from flotilla.testing import ContainerdPeer, PrivateSuite, nats_server
from flotilla.testing.postgres import PostgresServer, available


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("Flotilla's tests run as root (they mount and start containers)")


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with nats_server() as url:
        yield url


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, "test")
    yield b
    await b.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Debian's PostgreSQL in a temporary directory, for the stores' conformance kits."""
    if not available():
        pytest.fail("Debian's postgresql 15 is required (make test installs it)")
    with PostgresServer() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store's database for its conformance kit: SQLite, then a real PostgreSQL's."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres").new_database())


@pytest.fixture(scope="session")
def suite() -> Iterator[PrivateSuite]:
    with PrivateSuite() as s:
        yield s


@pytest.fixture(scope="session")
def containerd() -> Iterator[ContainerdPeer]:
    with ContainerdPeer() as peer:
        yield peer


@pytest.fixture
def stress() -> int:
    """How hard a stress test pushes: bounded in `make test`, FLOTILLA_STRESS=N for more."""
    return int(os.environ.get("FLOTILLA_STRESS", "1"))
