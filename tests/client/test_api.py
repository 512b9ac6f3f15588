"""flotilla.client against containerd and against Flotilla: the same calls, the same answers."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from flotilla.client import (AlreadyExists, Client, Container, FailedPrecondition, Image, NotFound,
                             generate_spec, with_process_args)
from flotilla.libs.distribution import Descriptor


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_version_and_namespaces(client: Client) -> None:
    assert (await client.version.get()).version
    await client.namespaces.create(client.namespace, {"team": "ci"})
    with pytest.raises(AlreadyExists):
        await client.namespaces.create(client.namespace)
    ns = await client.namespaces.set_labels(client.namespace, {"team": "", "x": "y"})
    assert ns.labels == {"x": "y"}
    assert client.namespace in [n.name for n in await client.namespaces.list()]


async def test_content_write_read_resume_and_labels(client: Client) -> None:
    data = os.urandom(3 << 20) + b"tail"
    d = digest(data)
    w = await client.content.writer("ref-a", len(data), d)
    assert w.offset == 0
    await w.write(data[: 1 << 20])
    await w.close()
    # the ingest is still there; a new writer on the same ref resumes where the first stopped
    assert [(s.ref, s.offset) for s in await client.content.statuses()] == [("ref-a", 1 << 20)]
    w = await client.content.writer("ref-a", len(data), d)
    assert w.offset == 1 << 20
    await w.write(data[w.offset:])
    assert await w.commit(len(data), d, {"k": "v"}) == d
    assert await client.content.read_all(d) == data
    part = b"".join([c async for c in client.content.read(d, offset=5, size=10)])
    assert part == data[5:15]
    info = await client.content.set_labels(d, {"k": "", "a": "b"})
    assert info.labels == {"a": "b"} and info.size == len(data)
    assert [i.digest for i in await client.content.list("labels.a==b")] == [d]
    # an existing digest: AlreadyExists on open, nothing rewritten
    with pytest.raises(AlreadyExists):
        await client.content.writer("ref-b", len(data), d)
    assert await client.content.write_blob("ref-c", data, d) is False


async def test_content_wrong_digest_is_refused_and_leaves_nothing(client: Client) -> None:
    data = b"hello flotilla"
    wrong = digest(b"something else")
    w = await client.content.writer("ref-bad", len(data), wrong)
    await w.write(data)
    with pytest.raises(FailedPrecondition):
        await w.commit(len(data), wrong)
    await client.content.abort("ref-bad")
    assert not await client.content.exists(wrong)
    assert not await client.content.exists(digest(data))


async def test_images_containers_and_leases(client: Client) -> None:
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", digest(b"x"), 1)
    img = await client.images.create(Image("example.com/a:1", target, {"l": "1"}))
    assert img.created_at is not None
    with pytest.raises(AlreadyExists):
        await client.images.create(Image("example.com/a:1", target))
    img.labels = {"l": "2"}
    assert (await client.images.update(img, "labels")).labels == {"l": "2"}
    assert [i.name for i in await client.images.list("name==example.com/a:1")] == ["example.com/a:1"]
    await client.images.delete("example.com/a:1")
    with pytest.raises(NotFound):
        await client.images.get("example.com/a:1")

    spec = generate_spec(client.namespace, "c1", with_process_args("true"))
    c = await client.containers.create(Container("c1", "example.com/a:1", spec, labels={"x": "y"}))
    assert c.spec["process"]["args"] == ["true"] and c.runtime == "io.containerd.runc.v2"
    assert [x.id for x in await client.containers.list()] == ["c1"]
    await client.containers.delete("c1")

    lease = await client.leases.create(labels={"purpose": "test"})
    assert lease.id in [x.id for x in await client.leases.list()]
    await client.leases.delete(lease.id)
    assert lease.id not in [x.id for x in await client.leases.list()]


async def test_lease_scope_holds_what_is_written_under_it(client: Client) -> None:
    data = b"leased bytes"
    async with client.leases.scope() as lease:
        await client.content.write_blob("leased", data, digest(data))
        await client.snapshots.prepare("leased-active")
        resources = await client.leases.resources(lease.id)
        assert any(r.id == digest(data) and r.type == "content" for r in resources)
        assert any(r.id == "leased-active" and r.type.startswith("snapshots/") for r in resources)
        await client.snapshots.remove("leased-active")
    assert lease.id not in [x.id for x in await client.leases.list()]


async def test_snapshots_prepare_commit_view(client: Client) -> None:
    # under a lease: once view-1 is gone, nothing else keeps "base" from containerd's collector
    async with client.leases.scope():
        mounts = await client.snapshots.prepare("active-1", labels={"a": "b"})
        assert mounts and mounts[0].type in ("bind", "overlay")
        await client.snapshots.commit("base", "active-1")
        info = await client.snapshots.stat("base")
        assert info.kind == "committed"
        await client.snapshots.view("view-1", "base")
        assert (await client.snapshots.stat("view-1")).parent == "base"
        with pytest.raises(FailedPrecondition):
            await client.snapshots.remove("base")  # has a child
        await client.snapshots.remove("view-1")
        await client.snapshots.remove("base")
        assert await client.snapshots.list() == []


async def test_events_see_an_image_create(client: Client) -> None:
    seen: list[str] = []
    ready = asyncio.Event()

    async def watch() -> None:
        stream = client.events.subscribe(f'namespace=={client.namespace}')
        ready.set()
        async for ev in stream:
            seen.append(ev.topic)
            if ev.topic == "/images/create":
                assert ev.payload.get("name") == "example.com/ev:1"
                return

    watcher = asyncio.create_task(watch())
    await ready.wait()
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", digest(b"y"), 1)
    # keep creating until the subscription (which starts asynchronously) has seen one
    for i in range(50):
        await client.images.put(Image("example.com/ev:1", target))
        done, _ = await asyncio.wait([watcher], timeout=0.2)
        if done:
            break
        await client.images.delete("example.com/ev:1")
    await watcher
    assert "/images/create" in seen
