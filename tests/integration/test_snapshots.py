"""Issue 5 side by side: ctr snapshots commands, mounted trees, and layers applied through
Diff.Apply give the same results against Flotilla and containerd."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from flotilla._api.containerd.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from flotilla._api.containerd.api.types import descriptor_pb2
from flotilla.libs import mount as mnt
from flotilla.testing import ContainerdPeer, PrivateSuite, ctr
from tests.snapshots.layers import Entry, gz, tar_bytes, tree, zst

_ISO = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.]+Z")


def _norm(text: str, address: str) -> str:
    text = text.replace(address, "ADDRESS")
    text = _ISO.sub("TIME", text)
    # snapshot directories differ by design (their layout is each side's own)
    text = re.sub(r"(workdir=|upperdir=|lowerdir=|:|bind )/\S+?/\d+(/fs|/work)?(?=[\s,:]|$)",
                  lambda m: m.group(1) + "DIR" + ("/work" if m.group(2) == "/work" else ""), text)
    text = re.sub(r"(\w)/\d+/", r"\1/ID/", text)  # backend keys <ns>/<id>/<key> number differently
    # ctr prints labels in Go's random map order
    return "\n".join(",".join(sorted(line.split(","))) if re.fullmatch(r"[^\s=,]+=[^\s]*", line) else line
                     for line in text.split("\n"))


@pytest.fixture(autouse=True, scope="module")
def _snapshots_up(suite: PrivateSuite) -> None:
    """The suite is up once the gateway and metadata answer; wait for this service too
    (List is idempotent, so the gateway retries it until the service subscribes)."""
    suite.ctr("snapshots", "ls", check=True)


def _same(suite: PrivateSuite, peer: ContainerdPeer, ns: str, steps: list[list[str]]) -> None:
    for step in steps:
        ours = ctr(suite.address, *step, namespace=ns)
        theirs = ctr(peer.address, *step, namespace=ns)
        assert (ours.returncode, _norm(ours.stdout, suite.address), _norm(ours.stderr, suite.address)) == \
               (theirs.returncode, _norm(theirs.stdout, peer.address), _norm(theirs.stderr, peer.address)), step


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_ctr_snapshot_commands_match_containerd(suite: PrivateSuite, containerd: ContainerdPeer, sn: str) -> None:
    ns = "snap-" + uuid.uuid4().hex[:8]
    s = ["snapshots", "--snapshotter", sn]
    # ctr's lease ends with each command: a gc.root label keeps either daemon's collector, which
    # runs at its own moments, from taking a snapshot between two steps
    root = ["containerd.io/gc.root=test"]
    steps = [
        s + ["prepare", "base", ""],
        s + ["label", "base", *root],
        s + ["prepare", "base"],                       # AlreadyExists
        s + ["ls"],
        s + ["commit", "c-base", "base"],
        s + ["label", "c-base", *root],
        s + ["commit", "c-base", "base"],              # NotFound now
        s + ["prepare", "work", "c-base"],
        s + ["label", "work", *root],
        s + ["prepare", "orphan", "nope"],             # parent NotFound
        s + ["view", "look", "c-base"],
        s + ["label", "look", *root],
        s + ["ls"],
        s + ["tree"],
        s + ["info", "work"],
        s + ["info", "missing"],
        s + ["label", "work", "a=b", "c=d"],
        s + ["label", "work", "a="],
        s + ["info", "work"],
        s + ["mounts", "/mnt", "work"],
        s + ["mounts", "/mnt", "look"],
        s + ["mounts", "/mnt", "c-base"],              # committed: FailedPrecondition
        s + ["usage", "work"],
        s + ["rm", "c-base"],                          # has children
        s + ["rm", "work", "look"],
        s + ["rm", "missing"],
        s + ["commit", "c-look", "c-base"],            # not active
        s + ["rm", "c-base"],
        s + ["ls"],
        ["snapshots", "--snapshotter", "nosuch", "ls"],
    ]
    _same(suite, containerd, ns, steps)


def test_same_key_in_two_namespaces_is_two_snapshots(suite: PrivateSuite) -> None:
    a, b = "na-" + uuid.uuid4().hex[:6], "nb-" + uuid.uuid4().hex[:6]
    suite.ctr("snapshots", "prepare", "k", namespace=a, check=True)
    suite.ctr("snapshots", "prepare", "k", namespace=b, check=True)
    suite.ctr("snapshots", "rm", "k", namespace=a, check=True)
    assert "k" in suite.ctr("snapshots", "ls", namespace=b, check=True).stdout
    suite.ctr("snapshots", "rm", "k", namespace=b, check=True)


# -- mounted trees -------------------------------------------------------------------

class Side:
    """Snapshots and Diff over gRPC against one side, in one namespace, GC-rooted."""

    def __init__(self, address: str, ns: str, snapshotter: str = "overlayfs", timeout: float = 120) -> None:
        self.address, self.ns, self.sn, self.timeout = address, ns, snapshotter, timeout
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.snaps = snapshots_pb2_grpc.SnapshotsStub(self.channel)
        self.diff = diff_pb2_grpc.DiffStub(self.channel)
        self.md = [("containerd-namespace", ns)]

    def prepare(self, key: str, parent: str = "", view: bool = False) -> list:
        labels = {"containerd.io/gc.root": "test"}
        if view:
            return list(self.snaps.View(snapshots_pb2.ViewSnapshotRequest(
                snapshotter=self.sn, key=key, parent=parent, labels=labels), metadata=self.md,
                timeout=self.timeout).mounts)
        return list(self.snaps.Prepare(snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.sn, key=key, parent=parent, labels=labels), metadata=self.md,
                timeout=self.timeout).mounts)

    def commit(self, name: str, key: str) -> None:
        self.snaps.Commit(snapshots_pb2.CommitSnapshotRequest(snapshotter=self.sn, name=name, key=key,
                                                              labels={"containerd.io/gc.root": "test"}),
                          metadata=self.md, timeout=self.timeout)

    def remove(self, key: str) -> None:
        self.snaps.Remove(snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.sn, key=key), metadata=self.md)

    def apply(self, media_type: str, blob: bytes, mounts: list) -> descriptor_pb2.Descriptor:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        desc = descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=len(blob))
        return self.diff.Apply(diff_pb2.ApplyRequest(diff=desc, mounts=mounts), metadata=self.md, timeout=120).applied

    def close(self) -> None:
        self.channel.close()


def _ingest(address: str, ns: str, blob: bytes) -> str:
    import subprocess
    from flotilla.testing import CTR
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    # a seekable stdin (a file): ctr seeks when the store already holds part of the blob
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        for args in (["content", "ingest", "--expected-size", str(len(blob)), "--expected-digest", digest,
                      "ref-" + uuid.uuid4().hex[:8]],
                     ["content", "label", digest, "containerd.io/gc.root=test"]):
            f.seek(0)
            res = subprocess.run([CTR, "--address", address, "--namespace", ns, *args],
                                 stdin=f, capture_output=True, timeout=60)
            assert res.returncode == 0, (args, res.stderr)
    return digest


@contextmanager
def mounted(mounts: list) -> Iterator[Path]:
    target = Path(tempfile.mkdtemp(prefix="flotilla-test-mnt-"))
    try:
        mnt.mount_all(mounts, str(target))
        try:
            yield target
        finally:
            mnt.unmount_all(str(target))
    finally:
        target.rmdir()


def _busybox_layers() -> list[tuple[str, bytes]]:
    """Three layers built offline from busybox-static: added, changed, deleted files, an
    opaque directory, hardlinks, symlinks, a device, xattrs; gzip, zstd and plain tar."""
    bb = Path("/bin/busybox").read_bytes()
    one = tar_bytes([
        Entry("bin", "dir", mode=0o755), Entry("bin/busybox", data=bb, mode=0o755),
        Entry("bin/sh", "symlink", link="busybox"), Entry("bin/ls", "symlink", link="/bin/busybox"),
        Entry("bin/bb", "hardlink", link="bin/busybox"),
        Entry("etc", "dir", mode=0o755), Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
        Entry("etc/group", data=b"root:x:0:\n"),
        Entry("opt", "dir"), Entry("opt/data", "dir"), Entry("opt/data/a", data=b"a"),
        Entry("opt/data/b", data=b"b", uid=1000, gid=1000),
        Entry("tmp", "dir", mode=0o1777), Entry("dev", "dir"), Entry("dev/null", "char", mode=0o666, major=1, minor=3),
    ])
    two = tar_bytes([
        Entry("etc", "dir", mode=0o755), Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nme:x:1:1::/:/bin/sh\n"),
        Entry("etc/.wh.group"),
        Entry("opt", "dir"), Entry("opt/data", "dir"), Entry("opt/data/.wh..wh..opq"), Entry("opt/data/c", data=b"c"),
        Entry("usr", "dir"), Entry("usr/new", data=b"new", mode=0o600, xattrs={"user.flotilla": "yes"}),
    ])
    three = tar_bytes([
        Entry("bin", "dir", mode=0o755), Entry("bin/.wh.ls"), Entry("bin/cat", "symlink", link="busybox"),
        Entry("usr", "dir"), Entry("usr/new", data=b"newer", mode=0o640, mtime=1_700_000_000),
        Entry("usr/link", "hardlink", link="usr/new"),
    ])
    return [("application/vnd.oci.image.layer.v1.tar+gzip", gz(one)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", zst(two)),
            ("application/vnd.oci.image.layer.v1.tar", three)]


def _unpack(address: str, ns: str, layers: list[tuple[str, bytes]], sn: str) -> dict[str, tuple]:
    side = Side(address, ns, sn)
    parent = ""
    try:
        for i, (media, blob) in enumerate(layers):
            _ingest(address, ns, blob)
            mounts = side.prepare(f"extract-{i}", parent)
            side.apply(media, blob, mounts)
            side.commit(f"layer-{i}", f"extract-{i}")
            parent = f"layer-{i}"
        with mounted(side.prepare("top", parent, view=True)) as root:
            return tree(root)
    finally:
        side.close()


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_busybox_layers_unpack_to_the_same_tree(suite: PrivateSuite, containerd: ContainerdPeer, sn: str) -> None:
    ns = "unpack-" + uuid.uuid4().hex[:8]
    layers = _busybox_layers()
    ours = _unpack(suite.address, ns, layers, sn)
    theirs = _unpack(containerd.address, ns, layers, sn)
    assert ours == theirs
    assert "etc/group" not in ours and "bin/ls" not in ours
    assert sorted(k for k in ours if k.startswith("opt/data/")) == ["opt/data/c"]
    assert ours["usr/new"][4] == b"newer"


def test_apply_reports_uncompressed_digest(suite: PrivateSuite) -> None:
    ns = "dg-" + uuid.uuid4().hex[:8]
    raw = tar_bytes([Entry("f", data=b"1")])
    blob = gz(raw)
    _ingest(suite.address, ns, blob)
    side = Side(suite.address, ns)
    try:
        applied = side.apply("application/vnd.oci.image.layer.v1.tar+gzip", blob, side.prepare("k"))
        assert applied.digest == "sha256:" + hashlib.sha256(raw).hexdigest() and applied.size == len(raw)
        desc = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.layer.v1.tar+gzip",
                                         digest="sha256:" + hashlib.sha256(blob).hexdigest(), size=len(blob),
                                         annotations={"containerd.io/uncompressed": "sha256:" + "0" * 64})
        with pytest.raises(grpc.RpcError) as err:
            side.diff.Apply(diff_pb2.ApplyRequest(diff=desc, mounts=side.prepare("k2")), metadata=side.md)
        assert "wrong diff id" in (err.value.details() or "")
        missing = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.layer.v1.tar",
                                            digest="sha256:" + "1" * 64, size=1)
        with pytest.raises(grpc.RpcError) as err:
            side.diff.Apply(diff_pb2.ApplyRequest(diff=missing, mounts=side.prepare("k3")), metadata=side.md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        side.close()


def _content_leases(suite: PrivateSuite, ns: str, digest: str) -> list[str]:
    import asyncio

    from flotilla.libs.api.content import ContentClient

    async def info() -> list[str]:
        bus = await suite.bus("test")
        try:
            return (await ContentClient(bus, suite.suite.prefix).info(ns, digest)).leases
        finally:
            await bus.close()
    return asyncio.run(info())


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_diff_of_changed_snapshot_reproduces_the_tree(suite: PrivateSuite, sn: str) -> None:
    ns = "df-" + uuid.uuid4().hex[:8]
    layers = _busybox_layers()
    side = Side(suite.address, ns, sn)
    try:
        parent = ""
        for i, (media, blob) in enumerate(layers):
            _ingest(suite.address, ns, blob)
            side.apply(media, blob, side.prepare(f"x{i}", parent))
            side.commit(f"l{i}", f"x{i}")
            parent = f"l{i}"
        work = side.prepare("work", parent)
        with mounted(work) as root:
            (root / "etc/passwd").write_text("changed\n")
            (root / "etc/hostname").write_text("box\n")
            os.unlink(root / "bin/sh")
            shutil.rmtree(root / "opt/data")
            (root / "opt/newdir").mkdir()
            (root / "opt/newdir/f").write_bytes(b"f" * 10000)
            os.link(root / "opt/newdir/f", root / "opt/newdir/g")
            os.chmod(root / "usr/new", 0o611)
            want = tree(root)
        lower = side.prepare("lower-view", parent, view=True)
        d = side.diff.Diff(diff_pb2.DiffRequest(left=lower, right=work, labels={"containerd.io/gc.root": "t"}),
                           metadata=side.md + [("containerd-lease", "diff-lease")], timeout=120).diff
        assert d.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert "diff-lease" in _content_leases(suite, ns, d.digest)
        assert d.annotations["containerd.io/uncompressed"].startswith("sha256:")
        info = ctr(suite.address, "content", "ls", namespace=ns, check=True).stdout
        assert d.digest in info and "containerd.io/uncompressed=" + d.annotations["containerd.io/uncompressed"] in info
        applied = side.diff.Apply(diff_pb2.ApplyRequest(diff=d, mounts=side.prepare("again", parent)),
                                  metadata=side.md, timeout=120).applied
        assert applied.digest == d.annotations["containerd.io/uncompressed"]
        side.commit("again-c", "again")
        with mounted(side.prepare("again-view", "again-c", view=True)) as root:
            got = tree(root)
        assert got == _seconds(want)
    finally:
        side.close()


# -- crash safety ----------------------------------------------------------------------

def _restart_snapshots(suite: PrivateSuite) -> None:
    pid = suite.suite.program_pid("snapshots")
    os.kill(pid, 9)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # supervisord starts it again with a new pid
        try:
            if suite.suite.program_pid("snapshots") not in (0, pid):
                break
        except ValueError:
            pass
        time.sleep(0.05)
    else:
        pytest.fail("snapshots service was not restarted")


def _serving(suite: PrivateSuite) -> None:
    """Wait until the service answers again (List is idempotent: the gateway retries it)."""
    res = suite.ctr("snapshots", "ls")
    assert res.returncode == 0, res.stderr


def _records(suite: PrivateSuite) -> dict[int, tuple[str, str, str]]:
    db = sqlite3.connect(f"file:{suite.suite.root / 'snapshots' / 'meta.db'}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0]: (r[1], r[2], r[3]) for r in db.execute("select id, namespace, key, kind from snapshots "
                                                             "where snapshotter='overlayfs'")}
    finally:
        db.close()


@pytest.mark.slow
def test_sigkill_during_prepare_and_commit_leaves_no_half_state(suite: PrivateSuite, stress: int) -> None:
    ns = "crash-" + uuid.uuid4().hex[:8]
    stop = threading.Event()
    done: list[str] = []

    def churn(worker: int) -> None:
        side = Side(suite.address, ns, timeout=5)  # a call the kill cut off is not waited out
        i = 0
        try:
            while not stop.is_set():
                i += 1
                key = f"w{worker}-{i}"
                try:
                    side.prepare(key)
                    side.commit(f"{key}-c", key)
                    side.prepare(f"{key}-child", f"{key}-c")
                    done.append(key)
                except grpc.RpcError:
                    pass  # the service died under this call; what is visible is checked below
        finally:
            side.close()

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(3 * stress):
            time.sleep(0.3)
            _restart_snapshots(suite)
        _serving(suite)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert done, "no call completed"
    print(f"{len(done)} prepare/commit/prepare rounds completed")
    side = Side(suite.address, ns)
    try:
        side.snaps.Cleanup(snapshots_pb2.CleanupRequest(snapshotter="overlayfs"), metadata=side.md)
        infos = [i for r in side.snaps.List(snapshots_pb2.ListSnapshotsRequest(snapshotter="overlayfs"),
                                            metadata=side.md) for i in r.info]
        base = suite.suite.root / "snapshots" / "overlayfs"
        records = _records(suite)
        on_disk = {int(d) for d in os.listdir(base) if d.isdigit()}
        # every record has its directory, and (after Cleanup) every directory its record
        assert set(records) == on_disk
        assert not [d for d in os.listdir(base) if not d.isdigit()]
        for sid, (_, key, kind) in records.items():
            assert (base / str(sid) / "fs").is_dir()
            if kind == "active" and key.endswith("-child"):
                assert (base / str(sid) / "work").is_dir()
        # active snapshots listed mount (a sample: each mount is two processes)
        for info in [i for i in infos if i.kind == snapshots_pb2.ACTIVE][-10:]:
            if info.kind == snapshots_pb2.ACTIVE:
                with mounted(list(side.snaps.Mounts(snapshots_pb2.MountsRequest(
                        snapshotter="overlayfs", key=info.name), metadata=side.md).mounts)):
                    pass
        # and everything can be removed, children first
        for info in infos:
            if info.kind == snapshots_pb2.ACTIVE:
                side.remove(info.name)
        for info in infos:
            if info.kind == snapshots_pb2.COMMITTED:
                side.remove(info.name)
    finally:
        side.close()
    assert not [k for k in _records(suite).values() if k[0] == ns]


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _big_layer() -> bytes:
    rnd = random.Random(5)
    return gz(tar_bytes([Entry("big", "dir")] + [Entry(f"big/f{i}", data=rnd.randbytes(64 * 1024))
                                                 for i in range(400)]))


@pytest.mark.slow
def test_sigkill_during_apply_leaves_no_worker_and_service_recovers(suite: PrivateSuite, stress: int) -> None:
    ns = "crash-apply-" + uuid.uuid4().hex[:6]
    blob = _big_layer()
    _ingest(suite.address, ns, blob)
    media = "application/vnd.oci.image.layer.v1.tar+gzip"
    for round_ in range(stress):
        side = Side(suite.address, ns, timeout=30)
        try:
            # warm the pool so its workers exist, then kill the service under a second apply
            side.apply(media, blob, side.prepare(f"warm-{round_}"))
            service = suite.suite.program_pid("snapshots")
            workers = _children(service)
            assert workers, "the service has worker processes"
            mounts = side.prepare(f"cut-{round_}")
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            call = side.diff.Apply.future(diff_pb2.ApplyRequest(
                diff=descriptor_pb2.Descriptor(media_type=media, digest=digest, size=len(blob)), mounts=mounts),
                metadata=side.md, timeout=10)  # the killed service never answers: not waited out
            _restart_snapshots(suite)
            try:
                call.result()  # the layer may have been applied in full before the kill
            except grpc.RpcError:
                pass
            _serving(suite)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(os.path.exists(f"/proc/{w}") and
                                                      not open(f"/proc/{w}/stat").read().split()[2] == "Z"
                                                      for w in workers):
                time.sleep(0.05)
            alive = [w for w in workers if os.path.exists(f"/proc/{w}")
                     and open(f"/proc/{w}/stat").read().split()[2] != "Z"]
            assert alive == [], "workers outlived the killed service"
            # the half-applied snapshot is still only an active one; it can be dropped
            info = side.snaps.Stat(snapshots_pb2.StatSnapshotRequest(snapshotter="overlayfs", key=f"cut-{round_}"),
                                   metadata=side.md).info
            assert info.kind == snapshots_pb2.ACTIVE
            side.remove(f"cut-{round_}")
            # and the restarted service applies the layer in full
            res = suite.ctr("snapshots", "ls", namespace=ns)
            assert res.returncode == 0, res.stderr
            side.apply(media, blob, side.prepare(f"again-{round_}"))
            side.commit(f"again-c-{round_}", f"again-{round_}")
            with mounted(side.prepare(f"v-{round_}", f"again-c-{round_}", view=True)) as root:
                assert len(os.listdir(root / "big")) == 400
            for key in (f"v-{round_}", f"again-c-{round_}", f"warm-{round_}"):
                side.remove(key)
        finally:
            side.close()
    assert not list((suite.suite.state / "snapshots").glob("mnt-*"))


def test_lease_header_is_recorded_for_the_collector(suite: PrivateSuite) -> None:
    """The GC reads `leases` from list(): a snapshot made under a containerd-lease names it."""
    import asyncio

    from flotilla.libs.api.snapshots import SnapshotsClient
    from flotilla.libs.config import load

    ns = "lease-" + uuid.uuid4().hex[:6]
    with grpc.insecure_channel(f"unix://{suite.address}") as ch:
        stub = snapshots_pb2_grpc.SnapshotsStub(ch)
        stub.Prepare(snapshots_pb2.PrepareSnapshotRequest(snapshotter="overlayfs", key="k",
                                                          labels={"containerd.io/gc.root": "t"}),
                     metadata=[("containerd-namespace", ns), ("containerd-lease", "my-lease")])

    async def listed() -> list:
        bus = await suite.bus("test")
        try:
            client = SnapshotsClient(bus, suite.suite.prefix, load(suite.env()).host)
            infos = await client.list(ns, "overlayfs")
            await client.remove(ns, "overlayfs", "k")
            return infos
        finally:
            await bus.close()

    infos = asyncio.run(listed())
    assert [(i.name, i.leases) for i in infos] == [("k", ["my-lease"])]


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_hostile_layer_through_apply_is_contained(suite: PrivateSuite, sn: str, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("keep\n")
    ns = "hostile-" + uuid.uuid4().hex[:6]
    layer = tar_bytes([
        Entry("../../../../../../" + str(host).lstrip("/") + "/dotdot", data=b"x"),
        Entry(str(host / "absolute"), data=b"x"),
        Entry("out", "symlink", link=str(host)), Entry("out/passwd", data=b"pwned"),
        Entry("out/.wh.passwd"),
    ])
    _ingest(suite.address, ns, layer)
    side = Side(suite.address, ns, sn)
    try:
        side.apply("application/vnd.oci.image.layer.v1.tar", layer, side.prepare("k"))
        bad = tar_bytes([Entry("h", "hardlink", link=str(host / "passwd"))])
        _ingest(suite.address, ns, bad)
        with pytest.raises(grpc.RpcError) as err:
            side.apply("application/vnd.oci.image.layer.v1.tar", bad, side.prepare("k2"))
        assert err.value.code() == grpc.StatusCode.UNKNOWN and "hardlink" in (err.value.details() or "")
    finally:
        side.close()
    assert sorted(os.listdir(host)) == ["passwd"] and (host / "passwd").read_text() == "keep\n"
    assert os.stat(host / "passwd").st_nlink == 1


def _changed_work(side: Side, layers: list[tuple[str, bytes]]) -> tuple[str, list, list, dict[str, tuple]]:
    """Unpack the busybox layers, change a snapshot on top; return (parent, lower, upper, tree)."""
    parent = ""
    for i, (media, blob) in enumerate(layers):
        _ingest(side.address, side.ns, blob)
        side.apply(media, blob, side.prepare(f"x{i}", parent))
        side.commit(f"l{i}", f"x{i}")
        parent = f"l{i}"
    work = side.prepare("work", parent)
    with mounted(work) as root:
        (root / "etc/passwd").write_text("changed\n")
        os.unlink(root / "bin/sh")
        shutil.rmtree(root / "opt/data")
        (root / "opt/newdir").mkdir()
        (root / "opt/newdir/f").write_bytes(b"f" * 5000)
        os.link(root / "opt/newdir/f", root / "opt/newdir/g")
        os.symlink("../etc/passwd", root / "opt/pw")
        os.chmod(root / "usr/new", 0o611)
        want = tree(root)
    return parent, side.prepare("lower", parent, view=True), work, want


def _seconds(t: dict[str, tuple]) -> dict[str, tuple]:
    """A tree with file times in whole seconds: a Diff layer (containerd's and ours) keeps no more."""
    return {k: v[:-1] + ((v[-1] // 10**9) * 10**9 if v[-1] is not None else None,) for k, v in t.items()}


def _blob(address: str, ns: str, digest: str) -> bytes:
    import subprocess
    from flotilla.testing import CTR
    return subprocess.run([CTR, "--address", address, "--namespace", ns, "content", "get", digest],
                          capture_output=True, check=True, timeout=60).stdout


def test_diffs_cross_apply_between_flotilla_and_containerd(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    """Each side's Diff layer, applied by the other side onto its own parent, gives the
    tree the first side changed: the layers are the same format, whiteouts included."""
    ns = "xdiff-" + uuid.uuid4().hex[:6]
    layers = _busybox_layers()
    ours, theirs = Side(suite.address, ns), Side(containerd.address, ns)
    try:
        results = {}
        for side in (ours, theirs):
            parent, lower, upper, want = _changed_work(side, layers)
            d = side.diff.Diff(diff_pb2.DiffRequest(left=lower, right=upper,
                                                    labels={"containerd.io/gc.root": "t"}),
                               metadata=side.md, timeout=120).diff
            results[side.address] = (parent, d, want)
        for src, dst in ((ours, theirs), (theirs, ours)):
            parent, d, want = results[src.address]
            blob = _blob(src.address, ns, d.digest)
            _ingest(dst.address, ns, blob)
            dst.apply(d.media_type, blob, dst.prepare("cross", parent))
            dst.commit("cross-c", "cross")
            with mounted(dst.prepare("cross-v", "cross-c", view=True)) as root:
                got, want = tree(root), _seconds(want)
            assert got == want, (src.address, [(k, got.get(k, ())[-1:], want.get(k, ())[-1:]) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)])
    finally:
        ours.close()
        theirs.close()


def _ctr_mount(address: str, ns: str, sn: str, key: str, target: Path) -> None:
    """Run the very command `ctr snapshots mounts` prints."""
    import subprocess
    cmd = ctr(address, "snapshots", "--snapshotter", sn, "mounts", str(target), key, namespace=ns, check=True).stdout
    assert cmd.startswith("mount "), cmd
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_mounting_what_ctr_prints_gives_the_same_tree(suite: PrivateSuite, containerd: ContainerdPeer,
                                                      sn: str, tmp_path: Path) -> None:
    ns = "mnt-" + uuid.uuid4().hex[:6]
    trees = []
    for address in (suite.address, containerd.address):
        target = tmp_path / f"t{len(trees)}"
        target.mkdir()
        c = lambda *a: ctr(address, "snapshots", "--snapshotter", sn, *a, namespace=ns, check=True)  # noqa: E731
        c("prepare", "base")
        _ctr_mount(address, ns, sn, "base", target)
        try:
            (target / "etc").mkdir()
            (target / "etc/hostname").write_text("one\n")
            (target / "gone").write_text("x")
        finally:
            mnt.unmount_all(str(target))
        c("commit", "base-c", "base")
        c("prepare", "top", "base-c")
        _ctr_mount(address, ns, sn, "top", target)
        try:
            assert (target / "etc/hostname").read_text() == "one\n"
            (target / "gone").unlink()
            (target / "etc/hostname").write_text("two\n")
            (target / "new").symlink_to("etc/hostname")
        finally:
            mnt.unmount_all(str(target))
        c("commit", "top-c", "top")
        c("view", "look", "top-c")
        _ctr_mount(address, ns, sn, "look", target)
        try:
            t = tree(target)
            trees.append({k: v[:4] + (v[4],) for k, v in t.items()})  # kinds, modes, owners, contents
            with pytest.raises(OSError):
                (target / "ro").write_text("x")
        finally:
            mnt.unmount_all(str(target))
        for key in ("look", "top-c", "base-c"):
            c("rm", key)
    assert trees[0] == trees[1]
    assert sorted(trees[0]) == ["etc", "etc/hostname", "new"]


async def test_apply_reads_a_remote_blob_over_nats(suite: PrivateSuite, tmp_path: Path) -> None:
    """A differ on a host without the blob file streams the layer over the bus."""
    from flotilla.libs.api.content import ContentClient
    from flotilla.services.snapshots.api import Descriptor, Mount
    from flotilla.services.snapshots.diffs import Differ

    ns = "remote-" + uuid.uuid4().hex[:6]
    raw = tar_bytes([Entry("d", "dir")] + [Entry(f"d/f{i}", data=os.urandom(300_000)) for i in range(10)])
    blob = gz(raw)
    _ingest(suite.address, ns, blob)
    bus = await suite.bus("remote-differ")
    differ = Differ(ContentClient(bus, suite.suite.prefix, local=False), tmp_path / "scratch", workers=1)
    try:
        root = tmp_path / "root"
        root.mkdir()
        desc = Descriptor(media_type="application/vnd.oci.image.layer.v1.tar+gzip",
                          digest="sha256:" + hashlib.sha256(blob).hexdigest(), size=len(blob))
        applied = await differ.apply(ns, desc, [Mount(type="bind", source=str(root), options=["rbind", "rw"])])
        assert applied.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert len(os.listdir(root / "d")) == 10
        assert os.listdir(tmp_path / "scratch") == []  # the downloaded copy is gone
    finally:
        differ.close()
        await bus.close()


async def test_gateway_mounts_follow_changes_made_past_it(suite: PrivateSuite) -> None:
    """The gateway answers Mounts of a snapshot it prepared itself (services/gateway/records.py);
    a remove made past it (another gateway, the garbage collector) and a new Prepare of the
    same key with another parent are seen as soon as the event crosses the bus."""
    import asyncio

    from flotilla.libs.api.snapshots import SnapshotsClient
    from flotilla.libs.config import load
    from tests.integration.records_kit import count_requests, not_found, soon

    ns = "mnt-" + uuid.uuid4().hex[:8]
    md = [("containerd-namespace", ns)]
    bus = await suite.bus("elsewhere")
    elsewhere = SnapshotsClient(bus, suite.suite.prefix, load(suite.env("gateway")).host)
    asked = await count_requests(bus, f"{suite.suite.prefix}.snapshots.*.mounts")
    try:
        await elsewhere.prepare(ns, "overlayfs", "base-a")
        await elsewhere.commit(ns, "overlayfs", "a", "base-a")
        await elsewhere.prepare(ns, "overlayfs", "base-b")
        await elsewhere.commit(ns, "overlayfs", "b", "base-b")
        with grpc.insecure_channel(f"unix://{suite.address}") as ch:
            stub = snapshots_pb2_grpc.SnapshotsStub(ch)
            stub.Prepare(snapshots_pb2.PrepareSnapshotRequest(snapshotter="overlayfs", key="k", parent="a"), metadata=md)

            def mounts() -> str:
                got = stub.Mounts(snapshots_pb2.MountsRequest(snapshotter="overlayfs", key="k"), metadata=md).mounts
                return " ".join(o for m in got for o in m.options)

            first = await asyncio.to_thread(mounts)
            assert first == await asyncio.to_thread(mounts)
            await bus.nc.flush()
            assert asked == {}  # what Prepare answered was kept

            await elsewhere.remove(ns, "overlayfs", "k")
            await elsewhere.prepare(ns, "overlayfs", "k", parent="b")

            await asyncio.to_thread(soon, lambda: mounts() != first)
            stub.Remove(snapshots_pb2.RemoveSnapshotRequest(snapshotter="overlayfs", key="k"), metadata=md)
            assert await asyncio.to_thread(not_found, mounts)
        for key in ("b", "a"):
            await elsewhere.remove(ns, "overlayfs", key)
    finally:
        await bus.close()
