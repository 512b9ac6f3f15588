"""The bus on a real nats-server."""

import asyncio

import pytest

from flotilla.libs.bus import Bus, decode_reply
from flotilla.libs.errors import InvalidArgument, NotFound, Unavailable


async def test_request_reply_and_errors_cross_intact(bus: Bus) -> None:
    async def handler(req: dict) -> dict:
        if req["name"] == "missing":
            raise NotFound('thing "missing": not found')
        return {"hello": req["name"]}

    sub = await bus.serve("t.rr.get", handler)
    try:
        assert await bus.request("t.rr.get", {"name": "x"}) == {"hello": "x"}
        with pytest.raises(NotFound, match='thing "missing": not found'):
            await bus.request("t.rr.get", {"name": "missing"})
    finally:
        await sub.unsubscribe()


async def test_unexpected_exception_becomes_internal(bus: Bus) -> None:
    async def handler(req: object) -> None:
        raise RuntimeError("bug")

    sub = await bus.serve("t.bug", handler)
    try:
        with pytest.raises(Exception) as info:
            await bus.request("t.bug", None)
        assert getattr(info.value, "code", None) == 13
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize("idempotent", [True, False])
async def test_a_call_nobody_received_waits_for_a_service_within_its_deadline(
        bus: Bus, nats_url: str, idempotent: bool) -> None:
    # nobody received it, so it is safe to send again, idempotent or not; at the deadline
    # it says that no service answers
    with pytest.raises(Unavailable, match="no service answers"):
        await bus.request("t.nobody", None, timeout=0.3, idempotent=idempotent)

    other = await Bus.connect(nats_url, "late")
    calls = []

    async def late() -> None:
        await asyncio.sleep(0.3)
        await other.serve("t.late", lambda req: asyncio.sleep(0, result=calls.append(req) or "ok"))

    task = asyncio.create_task(late())
    assert await bus.request("t.late", "x", timeout=5, idempotent=idempotent) == "ok"
    assert calls == ["x"]  # done once
    await task
    await other.close()


async def test_queue_group_spreads_requests_over_instances(bus: Bus, nats_url: str) -> None:
    seen: list[str] = []
    buses = [await Bus.connect(nats_url, f"inst{i}") for i in range(2)]
    for i, b in enumerate(buses):
        async def handler(req: object, name: str = f"inst{i}") -> str:
            seen.append(name)
            return name
        await b.serve("t.qg", handler)
    # nats-server picks a member per message at random, yet one full run saw a whole first batch
    # go to one member; the spread must show within a few batches
    for batch in range(1, 4):
        answers = await asyncio.gather(*(bus.request("t.qg", None) for _ in range(40)))
        assert sorted(answers) == sorted(seen[-40:]) and len(seen) == 40 * batch
        if set(seen) == {"inst0", "inst1"}:
            break
    assert set(seen) == {"inst0", "inst1"}
    for b in buses:
        await b.close()


async def test_handlers_run_concurrently(bus: Bus) -> None:
    running, peak = 0, 0
    release = asyncio.Event()

    async def slow(req: object) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 10:
            release.set()
        await release.wait()  # one at a time would never get here for the first call
        running -= 1
        return 1

    sub = await bus.serve("t.slow", slow)
    assert sum(await asyncio.gather(*(bus.request("t.slow", None, timeout=10) for _ in range(10)))) == 10
    assert peak == 10
    await sub.unsubscribe()


async def test_a_body_that_is_not_msgpack_is_invalid_argument_and_reaches_no_handler(bus: Bus) -> None:
    calls = []

    async def handler(req: object) -> None:
        calls.append(req)

    sub = await bus.serve("t.garbage", handler)
    try:
        msg = await bus.nc.request("t.garbage", b"\xc1\xc1", timeout=5)
        with pytest.raises(InvalidArgument, match="t.garbage: request not msgpack"):
            decode_reply(msg.data)
        assert calls == []
    finally:
        await sub.unsubscribe()
