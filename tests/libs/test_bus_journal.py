"""Issue 22: a non-idempotent call sent again with its request id does the work once, on a
real nats-server, across instances of a service that share a journal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flotilla.libs.bus import REQUEST_ID, Bus, decode_reply, replaying
from flotilla.libs.journal import Journal
from flotilla.libs.wire import pack

PREFIX = "jt"
STEM = f"{PREFIX}.svc"


async def _instance(nats_url: str, journal: Path, handler) -> Bus:  # type: ignore[no-untyped-def]
    bus = await Bus.connect(nats_url, "svc")
    bus.journal = Journal.sqlite(journal)
    await bus.serve(f"{STEM}.do", handler)
    await bus.announce(PREFIX, "svc", STEM)
    return bus


async def test_a_repeat_gets_the_recorded_answer(nats_url: str, tmp_path: Path) -> None:
    done: list[str] = []

    async def handler(req: str) -> str:
        done.append(req)
        return f"made {req} #{len(done)}"

    service = await _instance(nats_url, tmp_path / "j.db", handler)
    caller = await Bus.connect(nats_url, "caller")
    try:
        replies = [decode_reply((await caller.nc.request(f"{STEM}.do", pack("x"), timeout=5,
                                                          headers={REQUEST_ID: "r-1"})).data) for _ in range(3)]
        assert replies == ["made x #1"] * 3 and done == ["x"]
        # another id is another call
        assert decode_reply((await caller.nc.request(f"{STEM}.do", pack("y"), timeout=5,
                                                     headers={REQUEST_ID: "r-2"})).data) == "made y #2"
    finally:
        await caller.close()
        await service.close()


async def test_a_call_lost_with_a_dead_instance_is_replayed_once_by_the_next(nats_url: str, tmp_path: Path) -> None:
    """The first instance does the work and dies before it answers: the caller hears the next
    instance announce itself, sends the call again with the same id, and the next instance
    takes it over, told that it replays (so it finds the work done rather than doing it again)."""
    work: list[str] = []
    worked = asyncio.Event()

    async def dies_after_the_work(req: str) -> str:
        work.append(req)
        worked.set()
        await asyncio.sleep(3600)  # "dead": it never answers
        return "never"

    async def next_instance(req: str) -> str:
        if replaying() and req in work:
            return f"{req} was made"
        work.append(req)
        return f"made {req}"

    first = await _instance(nats_url, tmp_path / "j.db", dies_after_the_work)
    caller = await Bus.connect(nats_url, "caller")
    await caller.follow_restarts(PREFIX)
    call = asyncio.create_task(caller.request(f"{STEM}.do", "x", timeout=20))
    await asyncio.wait_for(worked.wait(), 5)
    await first.nc.close()  # the process is gone: no reply, no ping
    second = await _instance(nats_url, tmp_path / "j.db", next_instance)
    try:
        assert await asyncio.wait_for(call, 10) == "x was made"
        assert work == ["x"]
    finally:
        for task in list(first._tasks):
            task.cancel()
        await caller.close()
        await second.close()


async def test_a_repeat_while_another_live_instance_runs_it_waits_for_that_answer(
        nats_url: str, tmp_path: Path) -> None:
    release = asyncio.Event()
    runs: list[str] = []

    async def slow(req: str) -> str:
        runs.append(req)
        await release.wait()
        return f"made {req}"

    first = await _instance(nats_url, tmp_path / "j.db", slow)
    caller = await Bus.connect(nats_url, "caller")
    await caller.follow_restarts(PREFIX)
    call = asyncio.create_task(caller.request(f"{STEM}.do", "x", timeout=20))
    while not runs:
        await asyncio.sleep(0.01)
    # a second instance starts: the caller sends again, and the queue group may give the
    # repeat to either instance; neither runs it a second time
    second = await _instance(nats_url, tmp_path / "j.db", slow)
    await asyncio.sleep(0.5)
    release.set()
    try:
        assert await asyncio.wait_for(call, 10) == "made x"
        assert runs == ["x"]
    finally:
        await caller.close()
        await first.close()
        await second.close()


@pytest.mark.parametrize("idempotent", [True, False])
async def test_a_call_is_sent_again_when_its_service_restarts(nats_url: str, tmp_path: Path,
                                                               idempotent: bool) -> None:
    """Nothing waits out its deadline for an answer that was lost with its instance."""
    async def never(_req: object) -> str:
        await asyncio.sleep(3600)
        return "never"

    async def answers(req: str) -> str:
        return f"ok {req}"

    first = await _instance(nats_url, tmp_path / "j.db", never)
    caller = await Bus.connect(nats_url, "caller")
    await caller.follow_restarts(PREFIX)
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = asyncio.create_task(caller.request(f"{STEM}.do", "x", timeout=60, idempotent=idempotent))
    await asyncio.sleep(0.3)
    await first.nc.close()
    second = await _instance(nats_url, tmp_path / "j.db", answers)
    try:
        assert await asyncio.wait_for(call, 10) == "ok x"
        assert loop.time() - started < 10
    finally:
        for task in list(first._tasks):
            task.cancel()
        await caller.close()
        await second.close()
