"""Server-side pull: the suite's transfer service fetches, records and unpacks; clients watch."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from flotilla.client import Client, NotFound, Progress, Unauthenticated, Unimplemented
from flotilla.libs.distribution import BadManifest, Credentials, DigestMismatch, platforms
from flotilla.testing import ContainerdPeer, PrivateSuite, Registry
from flotilla.testing.images import (Entry, Image, build_image, busybox_entries, busybox_image, multiplatform_image,
                                     opaque, push, whiteout)
from tests.client.conftest import cleanup
from tests.client.fakeregistry import FakeRegistry
from tests.integration.test_snapshots import mounted
from tests.snapshots.layers import tree


@pytest.fixture(scope="module")
def registry() -> Registry:
    with Registry() as r:
        push(r.host, "busybox", "latest", busybox_image())
        push(r.host, "multiarch", "latest", multiplatform_image())
        yield r  # type: ignore[misc]


@pytest.fixture
async def client(suite: PrivateSuite) -> Client:
    c = Client(suite.address, "tr-" + uuid.uuid4().hex[:8])
    yield c  # type: ignore[misc]
    await cleanup(c)
    await c.close()


async def test_server_side_pull_records_unpacks_and_runs(client: Client, registry: Registry,
                                                        suite: PrivateSuite) -> None:
    ref = f"{registry.host}/busybox:latest"
    seen: list[Progress] = []
    img = await client.pull(ref, server_side=True, progress=seen.append)
    assert img.name == ref
    statuses = {p.status for p in seen}
    assert {"done", "unpacked"} <= statuses, statuses
    resolved = await client.resolve_image(ref)
    assert await client.snapshots.exists(resolved.chain_id)
    res = suite.ctr("run", "--rm", ref, "tr-" + uuid.uuid4().hex[:6], "echo", "hi", namespace=client.namespace)
    assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr
    # again: nothing is fetched
    again: list[Progress] = []
    await client.pull(ref, server_side=True, progress=again.append)
    assert "downloading" not in {p.status for p in again}
    assert not await client.leases.list()


async def test_server_side_pull_downloads_bottom_layer_first(client: Client, registry: Registry) -> None:
    # the unpack goes bottom up: a slot given to an upper layer first would hold it back
    layers = [busybox_entries()] + [[Entry(f"l{i}", data=uuid.uuid4().bytes * 4096)] for i in range(4)]
    img = build_image(layers)
    push(registry.host, "order", "v1", img)
    seen: list[Progress] = []
    await client.pull(f"{registry.host}/order:v1", server_side=True, concurrency=1, progress=seen.append)
    # one slot: each layer's download ends before the next one's begins
    fetched = [p.digest for p in seen if p.status in ("done", "exists") and p.key.startswith("layer-")]
    assert fetched == [layer.digest for layer in img.layers]


async def test_server_side_pull_selects_the_platform(client: Client, registry: Registry) -> None:
    ref = f"{registry.host}/multiarch:latest"
    arm = platforms.parse("linux/arm64")
    await client.pull(ref, server_side=True, platform=arm)
    assert b'"architecture": "arm64"' in (await client.resolve_image(ref, arm)).config_bytes
    assert len(await client.content.list()) == 4


async def test_server_side_pull_auth(client: Client) -> None:
    with Registry(auth=("flo", "tilla")) as r:
        push(r.host, "busybox", "latest", busybox_image(), auth=("flo", "tilla"))
        ref = f"{r.host}/busybox:latest"
        with pytest.raises(Unauthenticated, match="requires credentials"):
            await client.pull(ref, server_side=True)
        img = await client.pull(ref, server_side=True, credentials=Credentials("flo", "tilla"))
        assert img.name == ref


@pytest.mark.parametrize("garbage", ["manifest-json", "digest-mismatch"])
async def test_server_side_garbage_is_a_clear_error_and_leaves_nothing(client: Client, garbage: str) -> None:
    # a layer no other test stored: one already in the store is (rightly) never fetched again
    img = build_image([busybox_entries() + [Entry("unique", data=uuid.uuid4().bytes)]])
    layer = img.layers[0]
    with FakeRegistry() as fake:
        fake.add_image("app", "v1", img)
        if garbage == "manifest-json":
            fake.manifests["app/v1"].data = b"{oops"
            expected: type[Exception] = BadManifest
        else:
            fake.blobs[layer.digest].send = layer.data[:-4] + b"XXXX"
            expected = DigestMismatch
        with pytest.raises(Exception) as info:
            await client.pull(f"{fake.host}/app:v1", server_side=True)
        assert info.value.code == expected.code  # type: ignore[attr-defined]
        assert ("not valid JSON" if garbage == "manifest-json" else "digest mismatch") in str(info.value)
    assert await client.images.list() == []
    assert await client.content.statuses() == []
    assert not await client.content.exists(layer.digest)


async def test_containerd_has_no_server_side_pull(containerd: ContainerdPeer, registry: Registry) -> None:
    async with Client(containerd.address, "tr-" + uuid.uuid4().hex[:8]) as c:
        try:
            with pytest.raises(Unimplemented):
                await c.pull(f"{registry.host}/busybox:latest", server_side=True)
            # "if the server can": falls back to pulling client-side
            img = await c.pull(f"{registry.host}/busybox:latest", server_side=None)
            assert img.name == f"{registry.host}/busybox:latest"
        finally:
            await cleanup(c)


async def test_progress_is_published_as_events(client: Client, registry: Registry) -> None:
    ref = f"{registry.host}/busybox:latest"
    seen: list[dict[str, object]] = []

    async def watch() -> None:
        async for ev in client.events.subscribe(f'topic=="/transfer/progress",namespace=={client.namespace}'):
            seen.append(ev.payload)
            if ev.payload.get("key") == ref and ev.payload.get("status") == "done":
                return

    watcher = asyncio.create_task(watch())
    try:
        for _ in range(20):  # the subscription starts asynchronously: pull until it has seen one
            await client.pull(ref, server_side=True)
            done, _ = await asyncio.wait([watcher], timeout=0.5)
            if done:
                break
        await watcher
    finally:
        watcher.cancel()
    assert any(str(p.get("key", "")).startswith("layer-sha256:") for p in seen), seen
    assert seen[-1]["ref"] == ref and seen[-1]["digest"] == (await client.images.get(ref)).target.digest


async def test_server_side_push_and_pull_back(client: Client, registry: Registry, suite: PrivateSuite) -> None:
    ref = f"{registry.host}/busybox:latest"
    await client.pull(ref, server_side=True)
    copy = f"{registry.host}/pushed-{uuid.uuid4().hex[:6]}:v1"
    seen: list[Progress] = []
    top = await client.push(ref, copy, server_side=True, progress=seen.append)
    assert top.digest == (await client.images.get(ref)).target.digest
    assert any(p.status == "done" and p.key.startswith("layer-") for p in seen), seen
    other = client.with_namespace(client.namespace + "-b")
    try:
        back = await other.pull(copy, server_side=True)
        assert back.target.digest == top.digest
        res = suite.ctr("run", "--rm", copy, "back-" + uuid.uuid4().hex[:6], "echo", "back",
                        namespace=other.namespace)
        assert (res.returncode, res.stdout) == (0, "back\n"), res.stderr
    finally:
        await cleanup(other)
        await other.close()


def _stacking_image() -> Image:
    """Layers a parallel unpack applies apart (a changed file, a whiteout, an opaque dir), and
    two it must apply onto their parent: a hardlink to a lower file, and a file in a directory
    (with its own owner and mode below) that the layer does not list."""
    base = busybox_entries() + [
        Entry("data", "dir", mode=0o750, uid=1000, gid=1000), Entry("data/keep", data=b"keep\n"),
        Entry("data/gone", data=b"gone\n"), Entry("data/change", data=b"v1\n"),
        Entry("opaque", "dir"), Entry("opaque/old", data=b"old\n")]
    changed = [Entry("data", "dir", mode=0o750, uid=1000, gid=1000), Entry("data/change", data=b"v2\n"),
               whiteout("data/gone"), Entry("data/new", data=b"new\n", mode=0o600, uid=1000, gid=1000)]
    opaqued = [Entry("opaque", "dir"), opaque("opaque"), Entry("opaque/fresh", data=b"fresh\n")]
    hardlinked = [Entry("data", "dir", mode=0o750, uid=1000, gid=1000),
                  Entry("data/hard", "hardlink", target="data/keep")]
    unlisted_dir = [Entry("data/late", data=b"late\n")]
    return build_image([base, changed, opaqued, hardlinked, unlisted_dir])


async def _tree_of(client: Client, ref: str) -> dict[str, tuple]:
    key = "view-" + uuid.uuid4().hex[:8]
    mounts = await client.snapshots.view(key, (await client.resolve_image(ref)).chain_id)
    try:
        with mounted(mounts) as root:
            return tree(root)
    finally:
        await client.snapshots.remove(key)


async def test_server_side_pull_applies_layers_apart_and_stacks_them(client: Client, registry: Registry) -> None:
    push(registry.host, "stacking", "v1", _stacking_image())
    ref = f"{registry.host}/stacking:v1"
    prepared: list[dict[str, object]] = []
    marker = "marker-" + uuid.uuid4().hex[:8]

    async def watch() -> None:
        async for ev in client.events.subscribe(f'topic=="/snapshot/prepare",namespace=={client.namespace}'):
            prepared.append(ev.payload)

    def pulled() -> list[dict[str, object]]:
        return [p for p in prepared if not str(p.get("key", "")).startswith(marker)]

    watcher = asyncio.create_task(watch())
    markers: list[str] = []
    try:
        while not prepared and len(markers) < 50:  # the subscription starts asynchronously
            markers.append(f"{marker}-{len(markers)}")
            await client.snapshots.prepare(markers[-1])
            await asyncio.sleep(0.1)
        await client.pull(ref, server_side=True)
        for _ in range(100):  # events cross the bus after the calls answered
            if len(pulled()) >= 7:
                break
            await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
        for key in markers:  # the pull's end may have collected them already
            with contextlib.suppress(NotFound):
                await client.snapshots.remove(key)
    # the bottom layer and four detached tries; the last two need their parent: again onto it
    assert [p.get("parent", "") for p in pulled()].count("") == 5, pulled()
    assert sum(1 for p in pulled() if p.get("parent")) == 2, pulled()

    chain = (await client.resolve_image(ref)).chain_id
    info = await client.snapshots.stat(chain)
    assert info.parent and info.kind == "committed"
    other = client.with_namespace(client.namespace + "-seq")
    try:
        await other.pull(ref, server_side=False)  # Diff.Apply onto each parent, one by one
        assert await _tree_of(client, ref) == await _tree_of(other, ref)
    finally:
        await cleanup(other)
        await other.close()
