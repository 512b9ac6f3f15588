"""The gateway's cache of records: what it keeps and what it must not."""

from __future__ import annotations

import asyncio

import pytest

from flotilla.libs.errors import NotFound
from flotilla.services.gateway import records
from flotilla.services.gateway.records import RecordCache, event_key

KEY = ("ns", "c1")


async def test_a_fetch_that_began_before_a_drop_is_not_kept() -> None:
    cache: RecordCache[str] = RecordCache()
    answered = asyncio.Event()

    async def load() -> str:
        await answered.wait()
        return "old"
    fetch = asyncio.ensure_future(cache.fetch(KEY, load))
    await asyncio.sleep(0)
    cache.drop(KEY)                    # e.g. an update event while the fetch was on the bus
    answered.set()
    assert await fetch == "old"        # the caller gets its answer...
    assert cache.get(KEY) is None      # ...but it is not kept

    async def new() -> str:
        return "new"
    assert await cache.fetch(KEY, new) == "new"
    assert cache.get(KEY) == "new" and cache.get(("other", "c1")) is None


async def test_not_found_is_not_kept() -> None:
    cache: RecordCache[str] = RecordCache()

    async def missing() -> str:
        raise NotFound("container c1: not found")
    with pytest.raises(NotFound):
        await cache.fetch(KEY, missing)
    assert cache.get(KEY) is None


def test_records_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(records.time, "monotonic", lambda: now[0])
    cache: RecordCache[str] = RecordCache()
    cache.put(KEY, "r", cache.mark())
    now[0] += records.TTL - 0.01
    assert cache.get(KEY) == "r"
    now[0] += 0.02
    assert cache.get(KEY) is None


def test_event_keys() -> None:
    event = {"topic": "/containers/update", "namespace": "ns", "fields": {"id": "c1"}}
    assert event_key("id")(event) == ("ns", "c1")
    assert event_key("name", namespace_scoped=False)({"namespace": "caller", "fields": {"name": "n"}}) == ("", "n")


async def test_a_change_drops_the_record_whatever_came_of_it() -> None:
    cache: RecordCache[str] = RecordCache()
    cache.put(KEY, "r", cache.mark())

    async def updated() -> str:
        return "r2"
    assert await cache.change(KEY, updated()) == "r2"
    assert cache.get(KEY) is None

    cache.put(KEY, "r", cache.mark())

    async def refused() -> str:
        raise NotFound("container c1: not found")
    with pytest.raises(NotFound):
        await cache.change(KEY, refused())
    assert cache.get(KEY) is None
