"""Client-side pull, unpack, run and push with flotilla.client, against containerd and Flotilla."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from flotilla.client import (Client, NotFound, PullOptions, start_task, with_env, with_process_args)
from flotilla.libs.distribution import BadManifest, DigestMismatch, ShortRead, platforms
from flotilla.testing.images import busybox_image, multiplatform_image, random_layers_image

from .conftest import Images
from .fakeregistry import FakeRegistry


async def run(client: Client, image: str, *args: str, env: tuple[str, ...] = ()) -> tuple[int, str]:
    cid = "c-" + uuid.uuid4().hex[:8]
    await client.new_container(cid, image, with_process_args(*args), with_env(*env))
    out = bytearray()
    try:
        task = await start_task(client, cid, stdout=out.extend, stderr=out.extend)
        status = (await task.wait()).status
        await task.delete()
    finally:
        await client.delete_container(cid)
    return status, out.decode()


async def test_pull_unpack_and_run(client: Client, images: Images) -> None:
    seen: set[str] = set()
    img = await client.pull(images.ref("busybox"), progress=lambda p: seen.add(p.status))
    assert img.name == images.ref("busybox") and "done" in seen
    resolved = await client.resolve_image(img.name)
    assert await client.snapshots.exists(resolved.chain_id)
    # blobs carry containerd's GC labels, so deleting the image frees them
    manifest = await client.content.info(resolved.manifest_desc.digest)
    assert manifest.labels["containerd.io/gc.ref.content.config"] == resolved.manifest.config.digest
    layer = await client.content.info(resolved.manifest.layers[0].digest)
    assert layer.labels["containerd.io/uncompressed"] == resolved.diff_ids[0]
    assert await run(client, img.name, "echo", "hi") == (0, "hi\n")
    assert (await run(client, img.name, "sh", "-c", "exit 3"))[0] == 3
    assert (await run(client, img.name, "sh", "-c", "echo $A", env=("A=b",)))[1] == "b\n"
    # a second pull fetches nothing
    again: set[str] = set()
    await client.pull(images.ref("busybox"), progress=lambda p: again.add(p.status))
    assert "downloading" not in again


async def test_multilayer_unpack_has_whiteouts_and_opaque_dirs(client: Client, images: Images) -> None:
    img = await client.pull(images.ref("multilayer"))
    status, out = await run(client, img.name, "sh", "-c", "ls /data /opaque; cat /data/change")
    listed = out.split()
    assert status == 0
    assert {"keep", "change", "new", "link", "hard", "fresh", "v2"} <= set(listed)
    assert "gone" not in listed and "old" not in listed


async def test_multiplatform_pull_selects_the_platform(client: Client, images: Images) -> None:
    img = await client.pull(images.ref("multiarch"))
    host = platforms.host()
    assert (await run(client, img.name, "cat", "/etc/arch"))[1].strip() == host.architecture
    arm = platforms.parse("linux/arm64")
    name = images.ref("multiarch")
    await client.images.delete(name, sync=True)
    await client.pull(name, platform=arm)
    resolved = await client.resolve_image(name, arm)
    assert b'"architecture": "arm64"' in resolved.config_bytes
    with pytest.raises(Exception):
        await client.resolve_image(name)  # the host's manifest was not fetched


async def test_push_to_another_name_and_pull_back(client: Client, images: Images) -> None:
    img = await client.pull(images.ref("busybox"))
    copy = images.ref("pushed-" + uuid.uuid4().hex[:6], "v1")
    top = await client.push(img.name, copy)
    assert top.digest == img.target.digest
    other = client.with_namespace(client.namespace + "-b")
    try:
        back = await other.pull(copy)
        assert back.target.digest == img.target.digest
        assert await run(other, copy, "echo", "back") == (0, "back\n")
    finally:
        from .conftest import cleanup
        await cleanup(other)
        await other.close()


async def test_task_killed_with_sigterm_reports_its_status(client: Client, images: Images) -> None:
    img = await client.pull(images.ref("busybox"))
    cid = "k-" + uuid.uuid4().hex[:8]
    # PID 1 ignores signals it has no handler for: the shell traps SIGTERM and exits 7
    await client.new_container(cid, img.name, with_process_args(
        "sh", "-c", "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done"))
    try:
        out = bytearray()
        task = await start_task(client, cid, stdout=out.extend)
        assert (await client.tasks.get(cid)).status == "running"
        while b"ready" not in out:  # the trap is set once the shell has printed
            await asyncio.sleep(0.05)
        await task.kill("SIGTERM")
        assert (await task.wait()).status == 7
        await task.delete()
        # SIGKILL cannot be trapped: 128 + 9
        await client.containers.delete(cid)
        try:
            await client.snapshots.remove(cid)
        except NotFound:
            pass  # containerd's collector may take a deleted container's snapshot first
        await client.new_container(cid, img.name, with_process_args("sleep", "600"))
        task = await start_task(client, cid, with_io=False)
        await task.kill("SIGKILL")
        assert (await task.wait()).status == 137
        await task.delete()
    finally:
        await client.delete_container(cid)


async def _nothing_left(client: Client, *digests: str) -> None:
    assert await client.images.list() == []
    assert await client.content.statuses() == []
    for d in digests:
        assert not await client.content.exists(d), d
    assert await client.leases.list() == []


@pytest.mark.parametrize("garbage", ["manifest-json", "digest-mismatch", "truncated-blob"])
async def test_garbage_from_the_registry_is_a_clear_error_and_leaves_nothing(
        client: Client, garbage: str) -> None:
    img = busybox_image()
    layer = img.layers[0]
    with FakeRegistry() as fake:
        fake.add_image("app", "v1", img)
        if garbage == "manifest-json":
            fake.manifests["app/v1"].data = b'{"schemaVersion": 2, "layers": ['
            fake.manifests[f"app/{img.manifest.digest}"].data = b'{"schemaVersion": 2, "layers": ['
            expected: type[Exception] = BadManifest
            match = "not valid JSON"
        elif garbage == "digest-mismatch":
            fake.blobs[layer.digest].send = layer.data[:-4] + b"XXXX"
            expected, match = DigestMismatch, "digest mismatch"
        else:
            fake.blobs[layer.digest].truncate = len(layer.data) // 2
            expected, match = ShortRead, "ended at"
        with pytest.raises(expected, match=match):
            await client.pull(f"{fake.host}/app:v1")
    await _nothing_left(client, layer.digest, img.manifest.digest)


async def test_interrupted_layer_resumes_where_the_ingest_stopped(client: Client) -> None:
    img = random_layers_image(4, layers=1)
    layer = img.layers[-1]
    with FakeRegistry() as fake:
        fake.add_image("big", "v1", img)
        # an earlier pull that died after 1 MiB of this layer left its ingest behind
        w = await client.content.writer(f"layer-{layer.digest}", len(layer.data), layer.digest)
        await w.write(layer.data[: 1 << 20])
        await w.close()
        pulled = await client.pull(f"{fake.host}/big:v1", PullOptions(unpack=False))
        assert pulled.target.digest == img.manifest.digest
        assert f"GET /v2/big/blobs/{layer.digest} bytes={1 << 20}-" in fake.requests
    assert await client.content.exists(layer.digest)


async def test_zstd_and_docker_media_types_pull_and_run(client: Client, registry_host: str) -> None:
    """A Docker schema 2 manifest with a gzip layer under a zstd layer (OCI): both unpack."""
    import json

    import zstandard

    from flotilla.testing.images import Blob, Entry, busybox_entries, push as push_image, sha256, tar_layer
    from flotilla.testing.images import Image as TestImage

    raw = [tar_layer(busybox_entries()), tar_layer([Entry("etc/zstd", data=b"zstd layer\n")])]
    import gzip
    layers = [Blob("application/vnd.docker.image.rootfs.diff.tar.gzip", gzip.compress(raw[0], 6, mtime=0)),
              Blob("application/vnd.oci.image.layer.v1.tar+zstd", zstandard.ZstdCompressor().compress(raw[1]))]
    config = Blob("application/vnd.docker.container.image.v1+json", json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(r) for r in raw]}}).encode())
    manifest = Blob("application/vnd.docker.distribution.manifest.v2+json", json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": config.descriptor(), "layers": [b.descriptor() for b in layers]}).encode())
    push_image(registry_host, "zstd", "latest", TestImage(manifest, config, layers))
    img = await client.pull(f"{registry_host}/zstd:latest")
    assert img.target.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert await run(client, img.name, "cat", "/etc/zstd") == (0, "zstd layer\n")


@pytest.mark.parametrize("server_side", [False, None])
async def test_a_blob_in_the_store_is_not_fetched_again_even_for_another_namespace(
        client: Client, server_side: bool | None) -> None:
    img = busybox_image()
    with FakeRegistry() as fake:
        fake.add_image("app", "v1", img)
        await client.pull(f"{fake.host}/app:v1", server_side=server_side)
        assert any(r.startswith("GET /v2/app/blobs/") for r in fake.requests)
        fake.requests.clear()
        other = client.with_namespace(client.namespace + "-o")
        try:
            pulled = await other.pull(f"{fake.host}/app:v1", server_side=server_side)
            assert pulled.target.digest == img.manifest.digest
            # only the manifest is asked for (to resolve the tag); no blob crosses the wire again
            assert not [r for r in fake.requests if "/blobs/" in r], fake.requests
        finally:
            from .conftest import cleanup
            await cleanup(other)
            await other.close()


async def test_task_pids_pause_resume_exec(client: Client, images: Images) -> None:
    img = await client.pull(images.ref("busybox"))
    cid = "p-" + uuid.uuid4().hex[:8]
    await client.new_container(cid, img.name, with_process_args("sleep", "600"))
    try:
        task = await start_task(client, cid, with_io=False)
        assert await client.tasks.pids(cid) == [task.pid]
        await client.tasks.pause(cid)
        assert (await client.tasks.get(cid)).status == "paused"
        await client.tasks.resume(cid)
        assert (await client.tasks.get(cid)).status == "running"
        from flotilla.client import FifoSet, exec_process
        container = await client.containers.get(cid)
        io = FifoSet.create("e1")
        out = bytearray()
        try:
            io.start_copy(out.extend, out.extend)
            await client.tasks.exec(cid, "e1", exec_process(container.spec, ["sh", "-c", "echo from exec; exit 6"]),
                                    stdout=io.stdout, stderr=io.stderr)
            waiter = asyncio.ensure_future(client.tasks.wait(cid, "e1"))
            await asyncio.sleep(0)
            await client.tasks.start(cid, "e1")
            io.started()
            assert (await waiter).status == 6
            await io.wait()
            await client.tasks.delete_process(cid, "e1")
        finally:
            io.close()
        assert out == b"from exec\n"
        await task.kill("SIGKILL")
        await task.wait()
        await task.delete()
    finally:
        await client.delete_container(cid)


async def test_snapshot_usage_labels_and_diff_compare(client: Client, images: Images) -> None:
    img = await client.pull(images.ref("busybox"))
    parent = (await client.resolve_image(img.name)).chain_id
    info = await client.snapshots.set_labels(parent, {"team": "ci"})
    assert info.labels["team"] == "ci"
    assert (await client.snapshots.usage(parent)).size > 0
    # a view mounted, then compared with itself: an empty layer written to the content store
    # (under a lease: nothing else references the view or the layer, and GC runs after deletes)
    import subprocess
    import tempfile
    async with client.leases.scope():
        mounts = await client.snapshots.view("v-" + uuid.uuid4().hex[:6], parent)
        assert mounts
        desc = await client.diff.compare(mounts, mounts)
        assert desc.digest.startswith("sha256:") and await client.content.exists(desc.digest)
        with tempfile.TemporaryDirectory() as tmp:
            m = mounts[0]
            subprocess.run(["mount", "-t", m.type, m.source, tmp, "-o", ",".join(m.options)], check=True)
            try:
                assert (Path(tmp) / "bin" / "busybox").exists()
            finally:
                subprocess.run(["umount", tmp], check=True)


@pytest.mark.parametrize("server_side", [False, None])
async def test_push_of_a_multiplatform_image(client: Client, images: Images, server_side: bool | None) -> None:
    name = images.ref("multiarch")
    copy = images.ref("multi-" + uuid.uuid4().hex[:6], "v1")
    await client.pull(name, platform=platforms.parse("linux/arm64"))
    with pytest.raises(NotFound, match="linux/amd64 are not in the content store"):
        await client.push(name, copy, server_side=server_side)
    await client.pull(name, all_platforms=True)
    top = await client.push(name, copy, server_side=server_side)
    assert top.digest == (await client.images.get(name)).target.digest
    back = await client.pull(copy, all_platforms=True)
    assert back.target.digest == top.digest
