"""Issue 28: ``ctr image pull`` gets its layers applied ahead of its Diff.Apply calls
(services/snapshots/ahead.py), and what it ends with is what containerd's pull ends with:
the same snapshots and the same files; what was applied ahead and never asked for goes."""

from __future__ import annotations

import gzip
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from flotilla.testing import ContainerdPeer, PrivateSuite, Registry, ctr
from flotilla.testing.images import Entry, build_image, busybox_entries, opaque, push, sha256, tar_layer, whiteout
from flotilla.testing.peers import CTR
from tests.integration.test_images_e2e import _clean

# every kind a layer may hold: whiteouts, an opaque directory, a file in a directory only a
# lower layer lists (the apply ahead leaves that layer to its Diff.Apply), many files
LAYERS = [
    busybox_entries() + [Entry("data", "dir"), Entry("data/keep", data=b"keep\n"), Entry("data/gone", data=b"gone\n"),
                         Entry("opaque", "dir"), Entry("opaque/old", data=b"old\n")],
    [Entry("data", "dir"), Entry("data/new", data=b"new\n", mode=0o600, uid=1000, gid=1000), whiteout("data/gone")],
    [Entry("opaque", "dir"), opaque("opaque"), Entry("opaque/fresh", data=b"fresh\n")],
    [Entry("data/unlisted", data=b"unlisted\n")],
    [Entry("many", "dir"), *(Entry(f"many/f{i:03d}", data=b"%d\n" % i, mode=0o640) for i in range(200))],
]
LISTING = ["ls", "-lnRa", "/data", "/opaque", "/many"]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as r:
        yield r


def _image(registry: Registry) -> str:
    """A new image (its layers unique: a blob already stored is not fetched, so not applied ahead)."""
    tag = uuid.uuid4().hex[:8]
    push(registry.host, "ahead", tag, build_image([*LAYERS[:-1], LAYERS[-1] + [Entry("many/tag", data=tag.encode())]]))
    return f"{registry.host}/ahead:{tag}"


def _taken(suite: PrivateSuite) -> int:
    return (suite.suite.logs / "snapshots.log").read_text().count("applied ahead, moved into place")


def test_ctr_pull_applies_layers_ahead_and_ends_as_containerds(suite: PrivateSuite, containerd: ContainerdPeer,
                                                               registry: Registry) -> None:
    ns, ref = "ahead-" + uuid.uuid4().hex[:8], _image(registry)
    room = suite.suite.root / "snapshots" / ".ahead"
    before, waiting = _taken(suite), set(room.iterdir())  # (other tests' may wait there)
    try:
        for address in (suite.address, containerd.address):
            res = ctr(address, "image", "pull", "--plain-http", ref, namespace=ns, timeout=120)
            assert res.returncode == 0, res.stderr
        # the base layer, the whiteouts, the opaque directory and the many files were applied
        # ahead; the file in a directory listed below was applied by its Diff.Apply
        # (the log reaches its file through supervisord, a moment after the pull returns)
        deadline = time.monotonic() + 5
        while _taken(suite) - before < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _taken(suite) - before == 4
        assert set(room.iterdir()) - waiting == set()  # none of this pull's is left
        snapshots = [sorted(ctr(a, "snapshots", "ls", namespace=ns, check=True).stdout.splitlines())
                     for a in (suite.address, containerd.address)]
        assert snapshots[0] == snapshots[1] and len(snapshots[0]) == 1 + len(LAYERS)
        listings = [ctr(a, "run", "--rm", ref, "ls-" + uuid.uuid4().hex[:6], *LISTING, namespace=ns, timeout=60)
                    for a in (suite.address, containerd.address)]
        assert listings[0].returncode == listings[1].returncode == 0, listings[0].stderr + listings[1].stderr
        assert listings[0].stdout == listings[1].stdout
        assert "gone" not in listings[0].stdout and "old" not in listings[0].stdout
    finally:
        _clean(suite.address, ns)
        _clean(containerd.address, ns)


def test_a_layer_applied_ahead_and_never_asked_for_goes() -> None:
    with PrivateSuite(FLOTILLA_APPLY_AHEAD_TTL="2") as suite:
        room = suite.suite.root / "snapshots" / ".ahead"
        blob = gzip.compress(tar_layer([Entry("only", data=uuid.uuid4().bytes)]))
        # a layer's blob as containerd's client writes one (its ref says it is a layer)
        res = subprocess.run([CTR, "--address", suite.address, "-n", "ahead", "content", "ingest",
                              "layer-" + uuid.uuid4().hex], input=blob, capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr
        seen, deadline = False, time.monotonic() + 20
        while time.monotonic() < deadline:
            held = list(room.iterdir())
            seen = seen or bool(held)
            if seen and not held:
                break
            time.sleep(0.05)
        assert seen and list(room.iterdir()) == []  # applied ahead, and gone 2 s after
        assert suite.ctr("snapshots", "ls", namespace="ahead", check=True).stdout.splitlines()[1:] == []
        suite.ctr("content", "rm", sha256(blob), namespace="ahead", check=True)
