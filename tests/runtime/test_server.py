"""The runtime service over a real nats-server: its contract client against its NATS binding."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from flotilla.libs.api import runtime
from flotilla.libs.api.runtime import CreateTask, Kill, ProcessRef, RuntimeClient, Stdio
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import InvalidArgument, NotFound, Unknown
from flotilla.services.runtime.engine import Engine
from flotilla.services.runtime.server import RuntimeServer, publisher

from .conftest import make_spec


async def test_client_drives_a_task_through_the_bus(bus: Bus, shim_binary: Path, rootfs: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="flotilla-rt-srv-"))
    cfg = Config(state=state, prefix="rt" + uuid.uuid4().hex[:6], host_id="testhost")
    engine = Engine(state, publisher(bus, cfg), shim_binary)
    await RuntimeServer(bus, cfg, engine).start_serving()
    client = RuntimeClient(bus, cfg.prefix, "testhost")
    id = "srv-" + uuid.uuid4().hex[:8]
    events: list[dict] = []

    async def on_event(data: dict) -> None:
        events.append(data)
    await bus.subscribe(f"{cfg.prefix}.events", on_event)
    info = await client.create(CreateTask("ns1", id, make_spec(str(rootfs), ["/bin/sh", "-c", "exit 9"]),
                                          stdio=Stdio()))
    assert info.pid > 0 and info.status == "created"
    with pytest.raises(NotFound):
        await client.get(ProcessRef("ns1", "nope"))
    assert [t.id for t in await client.list("ns1")] == [id]
    await client.start(ProcessRef("ns1", id))
    exit_ = await client.wait(ProcessRef("ns1", id), poll=0.5)
    assert exit_.exit_status == 9
    with pytest.raises(NotFound, match="process already finished"):
        await client.kill(Kill("ns1", id, signal=9))
    with pytest.raises(Unknown, match="cannot start a stopped process"):
        await client.start(ProcessRef("ns1", id))
    assert (await client.delete(ProcessRef("ns1", id))).exit_status == 9
    assert await client.list("ns1") == []
    for _ in range(500):  # events arrive asynchronously on our own subscription
        if len(events) >= 4:
            break
        await asyncio.sleep(0.01)
    assert [e["topic"] for e in events] == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert events[2]["fields"]["exit_status"] == 9 and events[2]["type_url"] == "containerd.events.TaskExit"
    await engine.close()
    shutil.rmtree(state, ignore_errors=True)


async def test_every_route_is_served_and_refuses_bodies_that_make_no_record(bus: Bus, shim_binary: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="flotilla-rt-routes-"))
    cfg = Config(state=state, prefix="rt" + uuid.uuid4().hex[:6], host_id="test.host")
    engine = Engine(state, publisher(bus, cfg), shim_binary)
    server = RuntimeServer(bus, cfg, engine)
    assert [route for route, _ in server.routes()] == list(runtime.ROUTES)
    await server.start_serving()
    # a route and its method name the same subject; the host is one token
    assert runtime.subject(cfg.prefix, "test.host", runtime.WAIT) == f"{cfg.prefix}.runtime.test_host.tasks.wait"
    assert runtime.subject(cfg.prefix, "test.host", runtime.WAIT.method) == runtime.subject(
        cfg.prefix, "test.host", runtime.WAIT)
    for route in runtime.ROUTES:
        subject = runtime.subject(cfg.prefix, "test.host", route)
        for body in (None, [1], {"namespace": 5}):
            with pytest.raises(InvalidArgument):
                await bus.request(subject, body, timeout=5.0, idempotent=True)
    client = RuntimeClient(bus, cfg.prefix, "test.host")
    assert await client.list("ns1") == [] and await client.metrics(runtime.MetricsQuery("ns1")) == []
    await engine.close()
    shutil.rmtree(state, ignore_errors=True)
