"""Issue 7 end to end: Debian's ctr and the flotilla CLI pulling, running and pushing real images
from a real registry through Flotilla, side by side with containerd where it has an answer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from flotilla.client import Client
from flotilla.testing import ContainerdPeer, PrivateSuite, Registry, ctr
from flotilla.testing.images import (Entry, build_image, busybox_entries, busybox_image, multiplatform_image, push,
                                     random_layers_image)
from tests.client.fakeregistry import FakeRegistry


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as r:
        push(r.host, "busybox", "latest", busybox_image())
        push(r.host, "multiarch", "latest", multiplatform_image())
        yield r


def _ns() -> str:
    return "e2e-" + uuid.uuid4().hex[:8]


def _clean(address: str, ns: str) -> None:
    async def go() -> None:
        from tests.client.conftest import cleanup
        async with Client(address, ns) as c:
            await cleanup(c)
    asyncio.run(go())


def test_ctr_pull_run_push_and_pull_back(suite: PrivateSuite, registry: Registry) -> None:
    ns = _ns()
    ref = f"{registry.host}/busybox:latest"
    copy = f"{registry.host}/copy-{uuid.uuid4().hex[:6]}:v1"
    try:
        res = suite.ctr("image", "pull", "--plain-http", ref, namespace=ns, timeout=120)
        assert res.returncode == 0, res.stderr
        res = suite.ctr("run", "--rm", ref, "e2e-" + uuid.uuid4().hex[:6], "echo", "hi", namespace=ns, timeout=120)
        assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr
        res = suite.ctr("run", "--rm", ref, "e2e-" + uuid.uuid4().hex[:6], "sh", "-c", "exit 3", namespace=ns)
        assert res.returncode == 3, res.stderr
        suite.ctr("image", "tag", ref, copy, namespace=ns, check=True)
        res = suite.ctr("image", "push", "--plain-http", copy, namespace=ns, timeout=120)
        assert res.returncode == 0, res.stderr
        suite.ctr("image", "rm", "--sync", ref, copy, namespace=ns, check=True)
        assert suite.ctr("content", "ls", "-q", namespace=ns, check=True).stdout == ""
        res = suite.ctr("image", "pull", "--plain-http", copy, namespace=ns, timeout=120)
        assert res.returncode == 0, res.stderr
        res = suite.ctr("run", "--rm", copy, "e2e-" + uuid.uuid4().hex[:6], "echo", "back", namespace=ns)
        assert (res.returncode, res.stdout) == (0, "back\n"), res.stderr
        check = suite.ctr("image", "check", namespace=ns, check=True).stdout
        assert "complete" in check and copy in check
    finally:
        _clean(suite.address, ns)


@pytest.mark.parametrize("platform", ["", "linux/arm64"])
def test_ctr_multiplatform_pull_fetches_what_containerd_fetches(suite: PrivateSuite, containerd: ContainerdPeer,
                                                                registry: Registry, platform: str) -> None:
    ns = _ns()
    ref = f"{registry.host}/multiarch:latest"
    args = ["image", "pull", "--plain-http", *(["--platform", platform] if platform else []), ref]
    try:
        ours, theirs = suite.ctr(*args, namespace=ns, timeout=120), ctr(containerd.address, *args, namespace=ns,
                                                                         timeout=120)
        assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
        blobs = [set(x.ctr("content", "ls", "-q", namespace=ns, check=True).stdout.split()) if isinstance(x, PrivateSuite)
                 else set(ctr(x.address, "content", "ls", "-q", namespace=ns, check=True).stdout.split())
                 for x in (suite, containerd)]
        assert blobs[0] == blobs[1] and len(blobs[0]) == 4  # index, one manifest, its config and layer
        snaps = [len(suite.ctr("snapshots", "ls", namespace=ns, check=True).stdout.splitlines()),
                 len(ctr(containerd.address, "snapshots", "ls", namespace=ns, check=True).stdout.splitlines())]
        assert snaps[0] == snaps[1] == 2
        if not platform:
            res = suite.ctr("run", "--rm", ref, "mp-" + uuid.uuid4().hex[:6], "cat", "/etc/arch", namespace=ns)
            assert res.stdout == "amd64\n", res.stderr
    finally:
        _clean(suite.address, ns)
        _clean(containerd.address, ns)


def test_ctr_pull_with_and_without_credentials(suite: PrivateSuite) -> None:
    ns = _ns()
    with Registry(auth=("flo", "tilla")) as r:
        push(r.host, "busybox", "latest", busybox_image(), auth=("flo", "tilla"))
        ref = f"{r.host}/busybox:latest"
        try:
            res = suite.ctr("image", "pull", "--plain-http", ref, namespace=ns, timeout=120)
            assert res.returncode != 0 and "401 Unauthorized" in res.stderr, res.stderr
            res = suite.ctr("image", "pull", "--plain-http", "--user", "flo:tilla", ref, namespace=ns, timeout=120)
            assert res.returncode == 0, res.stderr
        finally:
            _clean(suite.address, ns)


@pytest.mark.parametrize("garbage", ["manifest-json", "digest-mismatch", "truncated-blob"])
def test_ctr_pull_of_garbage_fails_and_leaves_nothing(suite: PrivateSuite, garbage: str) -> None:
    ns = _ns()
    # a layer no earlier test stored: a blob already in the (shared) store is not fetched again
    img = build_image([busybox_entries() + [Entry("unique", data=uuid.uuid4().bytes)]])
    layer = img.layers[0]
    with FakeRegistry() as fake:
        fake.add_image("app", "v1", img)
        if garbage == "manifest-json":
            fake.manifests["app/v1"].data = b'{"schemaVersion": 2, "layers": ['
        elif garbage == "digest-mismatch":
            fake.blobs[layer.digest].send = layer.data[:-4] + b"XXXX"
        else:
            fake.blobs[layer.digest].truncate = len(layer.data) // 2
        try:
            res = suite.ctr("image", "pull", "--plain-http", f"{fake.host}/app:v1", namespace=ns, timeout=120)
            assert res.returncode != 0, res.stdout
            assert suite.ctr("image", "ls", "-q", namespace=ns, check=True).stdout == ""
            assert layer.digest not in suite.ctr("content", "ls", "-q", namespace=ns, check=True).stdout
        finally:
            _clean(suite.address, ns)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["client-side", "server-side"])
def test_flotilla_pull_killed_halfway_resumes_without_refetching(suite: PrivateSuite, stress: int, side: str) -> None:
    """SIGKILL of `flotilla pull` in the middle of a layer: the next pull fetches nothing that was
    complete. Client-side, the interrupted layer resumes from its ingest's offset (Range);
    server-side, the suite's transfer service finishes the pull it was given, so the next pull
    only finds everything there."""
    ns = _ns()
    img = random_layers_image(64 * stress, layers=4)  # 16 MiB layers: several reads each
    layers = img.layers[1:]
    with FakeRegistry() as fake:
        fake.add_image("big", "v1", img)
        for l in layers:
            fake.blobs[l.digest].slow = True
        cmd = [sys.executable, "-m", "flotilla.cli", "--address", suite.address, "--namespace", ns,
               "pull", "--max-concurrent-downloads", "1", f"{fake.host}/big:v1",
               *(["--client-side"] if side == "client-side" else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            async def halfway() -> set[str]:
                async with Client(suite.address, ns) as c:
                    while True:  # one layer committed and another part-way through
                        done = {l.digest for l in layers if await c.content.exists(l.digest)}
                        active = [s for s in await c.content.statuses() if s.offset > 0]
                        if done and active:
                            return done
                        assert proc.poll() is None, "the pull finished before it could be interrupted"
                        await asyncio.sleep(0.01)
            complete_before = asyncio.run(halfway())
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            fake.requests.clear()
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stderr
            gets = [r for r in fake.requests if r.startswith("GET /v2/big/blobs/")]
            ranged = [r for r in gets if " bytes=" in r]
            if side == "client-side":
                assert ranged, (gets, complete_before, res.stderr)  # the interrupted layer resumed
            fetched = {r.split()[1].rsplit("/", 1)[1] for r in gets}
            async def complete() -> list[str]:
                async with Client(suite.address, ns) as c:
                    return [l.digest for l in layers if await c.content.exists(l.digest)]
            assert len(asyncio.run(complete())) == len(layers)
            # nothing committed before the kill was fetched again
            assert not fetched & complete_before, (fetched, complete_before)
            assert "exists" in res.stderr
            res = suite.ctr("run", "--rm", f"{fake.host}/big:v1", "big-" + uuid.uuid4().hex[:6], "ls", "/",
                            namespace=ns, timeout=120)
            assert res.returncode == 0 and "blob3" in res.stdout, res.stderr
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _clean(suite.address, ns)


def test_ctr_image_tag_check_export_import_like_containerd(suite: PrivateSuite, containerd: ContainerdPeer,
                                                           registry: Registry, tmp_path: object) -> None:
    ns = _ns()
    ref = f"{registry.host}/busybox:latest"
    tagged = f"{registry.host}/busybox:tagged"
    outputs: dict[str, list[str]] = {}
    try:
        for name, run in (("flotilla", lambda *a, **kw: suite.ctr(*a, **kw)),
                          ("containerd", lambda *a, **kw: ctr(containerd.address, *a, **kw))):
            tar = f"{tmp_path}/{name}.tar"
            steps = [run("image", "pull", "--plain-http", ref, namespace=ns, timeout=120),
                     run("image", "tag", ref, tagged, namespace=ns),
                     run("image", "ls", namespace=ns),
                     run("image", "check", namespace=ns),
                     run("image", "export", tar, tagged, namespace=ns),
                     run("image", "import", tar, namespace=ns + "-imp"),
                     run("image", "ls", "-q", namespace=ns + "-imp"),
                     run("run", "--rm", tagged, "imp-" + uuid.uuid4().hex[:6], "echo", "imported", namespace=ns + "-imp")]
            assert all(s.returncode == 0 for s in steps), [s.stderr for s in steps]
            outputs[name] = [s.stdout for s in steps[2:4]] + [steps[6].stdout, steps[7].stdout]
        assert outputs["flotilla"] == outputs["containerd"]
        assert outputs["flotilla"][-1] == "imported\n"
    finally:
        for address in (suite.address, containerd.address):
            _clean(address, ns)
            _clean(address, ns + "-imp")
