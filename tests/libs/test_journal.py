"""The request journal's rules on both of its databases (SQLite, and PostgreSQL for a farm)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.libs.journal import Claim, Journal
from flotilla.testing.postgres import PostgresServer, available


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer | None]:
    if not available():
        yield None
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def journals(request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer | None
             ) -> Iterator[tuple[Journal, Journal]]:
    """Two instances' journals on one database."""
    if request.param == "sqlite":
        pair = Journal.sqlite(tmp_path / "j.db"), Journal.sqlite(tmp_path / "j.db")
    else:
        if postgres is None:
            pytest.skip("PostgreSQL is installed by make test")
        url = postgres.new_database()
        pair = Journal.at(url), Journal.at(url)
    yield pair
    for journal in pair:
        journal.close()


def test_a_call_is_claimed_once_recorded_and_answered_again(journals: tuple[Journal, Journal]) -> None:
    a, b = journals
    assert a.claim("r1", "a") == Claim()
    assert b.claim("r1", "b") == Claim(runner="a")         # a runs it
    assert a.reply("r1") is None
    a.record("r1", b"\x00answer")
    assert b.claim("r1", "b") == Claim(reply=b"\x00answer")  # the repeat gets the answer
    assert b.reply("r1") == b"\x00answer"


def test_a_dead_runners_call_is_taken_over_once(journals: tuple[Journal, Journal]) -> None:
    a, b = journals
    a.claim("r2", "dead")
    assert b.take_over("r2", "dead", "b") is True
    assert a.take_over("r2", "dead", "a") is False            # b was quicker
    b.record("r2", b"done")
    assert b.take_over("r2", "b", "c") is False               # recorded: nothing to take


def test_a_released_call_runs_again(journals: tuple[Journal, Journal]) -> None:
    a, b = journals
    a.claim("r3", "a")
    a.release("r3")
    assert b.claim("r3", "b") == Claim()
    b.record("r3", b"x")
    b.release("r3")                                          # a recorded answer stays
    assert a.reply("r3") == b"x"


def test_a_dropped_postgresql_connection_is_made_again(postgres: PostgresServer | None) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL is installed by make test")
    url = postgres.new_database()
    journal = Journal.at(url)
    journal.claim("before", "a")
    database = url.rsplit("/", 1)[1]
    postgres.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
    assert journal.claim("after", "a") == Claim()   # the server dropped it: made again, once
    assert journal.claim("before", "b") == Claim(runner="a")
    journal.close()
