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


async def test_an_update_keeps_its_answer_and_a_later_change_drops_it() -> None:
    """``replace`` keeps what an update returned; a change notice drops the record unless the
    record already shows that change (the notice of the update itself)."""
    cache: RecordCache[tuple[str, int]] = RecordCache()

    async def updated(at: int) -> tuple[str, int]:
        return ("labels", at)
    assert await cache.replace(KEY, updated(5)) == ("labels", 5)
    cache.drop_unless(KEY, lambda kept: kept[1] >= 5)   # its own notice: kept
    assert cache.get(KEY) == ("labels", 5)
    cache.drop_unless(KEY, lambda kept: kept[1] >= 7)   # a later change made elsewhere: dropped
    assert cache.get(KEY) is None


async def test_an_update_keeps_its_answer_only_if_it_shows_what_was_announced_meanwhile() -> None:
    """While an update is in flight, a drop or a change its answer does not show leaves no
    record (the answer may predate it); its own notice, even if it comes first, does not."""
    cache: RecordCache[str] = RecordCache()
    cache.put(KEY, "old", cache.mark())
    answered = asyncio.Event()

    async def update() -> str:
        await answered.wait()
        return "mine"
    pending = asyncio.ensure_future(cache.replace(KEY, update()))
    await asyncio.sleep(0)
    cache.drop(("ns", "other"))                 # any drop: the answer may predate it
    answered.set()
    assert await pending == "mine"
    assert cache.get(KEY) is None

    answered.clear()
    cache.put(KEY, "old", cache.mark())
    pending = asyncio.ensure_future(cache.replace(KEY, update()))
    await asyncio.sleep(0)
    cache.drop_unless(KEY, lambda kept: kept == "mine")  # its own notice, before its answer
    assert cache.get(KEY) is None                         # the old record goes at once
    answered.set()
    assert await pending == "mine" and cache.get(KEY) == "mine"

    answered.clear()
    pending = asyncio.ensure_future(cache.replace(KEY, update()))
    await asyncio.sleep(0)
    cache.drop_unless(KEY, lambda kept: kept == "newer")  # a change the answer does not show
    answered.set()
    assert await pending == "mine" and cache.get(KEY) is None

    async def failing() -> str:
        raise NotFound("gone")
    cache.put(KEY, "old", cache.mark())
    with pytest.raises(NotFound):
        await cache.replace(KEY, failing())
    assert cache.get(KEY) is None


async def test_a_fetch_that_began_before_an_update_is_not_kept_over_its_answer() -> None:
    """An Info in flight when this gateway's own update answers holds the record from
    before: the update's answer stays, the older fetch is not kept over it."""
    cache: RecordCache[tuple[str, int]] = RecordCache()
    answered = asyncio.Event()

    async def slow_load() -> tuple[str, int]:
        await answered.wait()
        return ("before", 1)
    fetch = asyncio.ensure_future(cache.fetch(KEY, slow_load))
    await asyncio.sleep(0)

    async def update() -> tuple[str, int]:
        return ("after", 2)
    assert await cache.replace(KEY, update()) == ("after", 2)
    cache.drop_unless(KEY, lambda kept: kept[1] >= 2)  # its own notice
    answered.set()
    assert await fetch == ("before", 1)
    assert cache.get(KEY) == ("after", 2)


async def test_an_update_answering_after_a_newer_change_was_kept_does_not_replace_it() -> None:
    """A newer record (kept by a fetch while this gateway's update was in flight) that shows a
    change announced meanwhile stays; the update's older answer, which does not, is not kept."""
    cache: RecordCache[tuple[str, int]] = RecordCache()
    answered = asyncio.Event()

    async def update() -> tuple[str, int]:
        await answered.wait()
        return ("mine", 1)
    pending = asyncio.ensure_future(cache.replace(KEY, update()))
    await asyncio.sleep(0)
    cache.put(KEY, ("theirs", 2), cache.mark())         # an Info fetched the newer record
    cache.drop_unless(KEY, lambda kept: kept[1] >= 2)   # its notice: the kept record shows it
    answered.set()
    assert await pending == ("mine", 1)
    assert cache.get(KEY) is None  # neither the older answer nor, conservatively, the newer record
