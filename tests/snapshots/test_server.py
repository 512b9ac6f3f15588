"""The service alone on a real nats-server, through its contract's client: host-local
subjects, errors across the bus, leases, namespace_held, events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flotilla.libs.api.snapshots import Info, SnapshotsClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flotilla.libs.subjects import events as events_subject
from flotilla.services.snapshots.__main__ import setup


@pytest.fixture
async def service(bus: Bus, nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[SnapshotsClient, Config]]:
    cfg = Config(root=tmp_path / "root", state=tmp_path / "state", prefix="t" + uuid.uuid4().hex[:8],
                 host_id="hostA")
    sbus = await Bus.connect(nats_url, "snapshots")
    stop = await setup(sbus, cfg)
    try:
        yield SnapshotsClient(bus, cfg.prefix, "hostA"), cfg
    finally:
        await stop()
        await sbus.close()


async def test_calls_over_the_bus(service: tuple[SnapshotsClient, Config], bus: Bus) -> None:
    client, cfg = service
    seen: list[dict[str, Any]] = []

    async def on_event(data: dict[str, Any]) -> None:
        seen.append(data)
    await bus.subscribe(events_subject(cfg.prefix), on_event)

    mounts = await client.prepare("ns1", "overlayfs", "k", lease="lease-1", labels={"a": "b"})
    assert mounts[0].type == "bind" and mounts[0].source.startswith(str(cfg.root / "snapshots"))
    with pytest.raises(AlreadyExists):
        await client.prepare("ns1", "overlayfs", "k")
    info = await client.stat("ns1", "overlayfs", "k")
    assert (info.kind, info.labels, info.leases) == ("active", {"a": "b"}, ["lease-1"])
    await client.commit("ns1", "overlayfs", "c", "k")
    await client.prepare("ns1", "overlayfs", "child", "c")
    with pytest.raises(FailedPrecondition):
        await client.remove("ns1", "overlayfs", "c")
    with pytest.raises(NotFound):
        await client.mounts("ns1", "overlayfs", "k")
    with pytest.raises(InvalidArgument):
        await client.list("ns1", "zfs")
    assert [i.name for i in await client.list("ns1", "overlayfs", ["parent==c"])] == ["child"]
    updated = await client.update("ns1", "overlayfs", Info(kind="", name="c", labels={"x": "1"}), ["labels.x"])
    assert updated.labels == {"x": "1"}
    assert await client.namespace_held("ns1") == ["overlayfs"]
    assert await client.namespace_held("ns2") == []
    assert (await client.usage("ns1", "overlayfs", "c")).inodes >= 1
    await client.remove("ns1", "overlayfs", "child")
    await client.remove("ns1", "overlayfs", "c")
    assert await client.namespace_held("ns1") == []
    await client.cleanup("overlayfs")
    for _ in range(100):  # events are asynchronous
        if len(seen) >= 5:
            break
        await asyncio.sleep(0.02)
    topics = [(e["topic"], e["namespace"], e["fields"]) for e in seen]
    assert ("/snapshot/prepare", "ns1", {"key": "k", "parent": ""}) in topics
    assert ("/snapshot/commit", "ns1", {"key": "k", "name": "c"}) in topics
    assert ("/snapshot/remove", "ns1", {"key": "c"}) in topics


async def test_another_hosts_subjects_are_not_answered(service: tuple[SnapshotsClient, Config], bus: Bus) -> None:
    client, cfg = service
    other = SnapshotsClient(bus, cfg.prefix, "hostB")
    with pytest.raises(Exception) as err:
        await other.prepare("ns", "overlayfs", "k", timeout=1)
    assert getattr(err.value, "code", None) in (14, 4)  # Unavailable / DeadlineExceeded
    assert await client.list("ns", "overlayfs") == []


async def test_a_body_that_makes_no_request_record_is_refused(service: tuple[SnapshotsClient, Config],
                                                              bus: Bus) -> None:
    from flotilla.libs.api import snapshots as s
    _, cfg = service
    with pytest.raises(InvalidArgument, match="KeyRequest"):
        await bus.request(s.subject(cfg.prefix, "hostA", s.STAT), {"namespace": "ns1", "key": 3}, idempotent=True)
    assert s.subject(cfg.prefix, "hostA", s.APPLY) == s.subject(cfg.prefix, "hostA", "diff.apply") \
        == f"{s.stem(cfg.prefix, 'hostA')}.diff.apply"
