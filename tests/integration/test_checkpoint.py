"""Issue 25: checkpoints into the content store and restores from it, side by side with
containerd. CRIU cannot dump on this machine, so both daemons refuse every checkpoint: what is
compared is the answer (code and words), that the task keeps running, and that nothing is
left (leases, blobs, ingests, temporary directories). The packing itself is tested with a
stand-in for CRIU in tests/runtime/test_checkpoints.py."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbcontent
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbcontent_grpc
from flotilla._api.containerd.api.services.leases.v1 import leases_pb2 as pbl
from flotilla._api.containerd.api.services.leases.v1 import leases_pb2_grpc as pbl_grpc
from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2 as pbt
from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2_grpc as pbt_grpc
from flotilla._api.containerd.api.types import descriptor_pb2
from flotilla._api.containerd.api.types.task import task_pb2
from flotilla._api.containerd.runtime.v2.runc.options import oci_pb2
from flotilla.libs.api.runtime import CHECKPOINT_TAR
from flotilla.testing import ContainerdPeer, PrivateSuite, ctr

from .test_runtime import _cleanup, _targets, _uid, _wait_status

NS = [("containerd-namespace", "default")]
pytestmark = pytest.mark.usefixtures("no_supervisor_left")
CHECKPOINT_OPTIONS = "containerd.runc.v1.CheckpointOptions"


def _leftovers(address: str) -> tuple[set[str], set[str], set[str]]:
    """Leases, blobs and ingests of the namespace."""
    def column(*args: str) -> set[str]:
        return {line.split()[0] for line in ctr(address, *args).stdout.splitlines()[1:] if line.strip()}
    return column("leases", "ls"), column("content", "ls"), column("content", "active")


@pytest.fixture
def scratch(suite: PrivateSuite) -> Iterator[Path]:
    """Flotilla's temporary checkpoint directories: empty after every test."""
    path = suite.suite.root / "runtime" / "checkpoints"
    yield path
    assert not path.exists() or list(path.iterdir()) == []


@pytest.fixture
def containerd_tmp() -> Iterator[None]:
    """containerd 1.6 never removes the directory it unpacks a checkpoint into (ctrd-checkpoint*
    under /tmp): those its restores made during the test are removed."""
    before = set(Path("/tmp").glob("ctrd-checkpoint*"))
    started = time.time()
    yield
    for d in set(Path("/tmp").glob("ctrd-checkpoint*")) - before:
        with contextlib.suppress(OSError):
            if d.stat().st_mtime >= started - 1:
                shutil.rmtree(d)


def test_ctr_checkpoint_without_image_path_side_by_side(suite: PrivateSuite, containerd: ContainerdPeer,
                                                        rootfs: Path, scratch: Path) -> None:
    """``ctr task checkpoint ID``: containerd checkpoints into a temporary directory, to be
    written into its content store; CRIU refuses here. Both answer ctr the same way, with
    runc's CRIU error naming the dump log, keep the task running and leave nothing."""
    results = []
    for name, address in _targets(suite, containerd):
        id = _uid("ckc")
        before = _leftovers(address)
        try:
            ctr(address, "run", "-d", "--runc-binary", "runc", "--rootfs", str(rootfs), id, "/bin/sleep", "1000",
                check=True)
            res = ctr(address, "task", "checkpoint", id, timeout=120)
            results.append(res.returncode)
            if res.returncode:
                assert "criu failed" in res.stderr and "dump.log" in res.stderr, (name, res.stderr)
            _wait_status(address, id, "RUNNING")
            if res.returncode == 0:  # where CRIU works: a checkpoint image, as containerd's
                assert "containerd.io/checkpoint=true" in ctr(address, "images", "ls").stdout
                continue
            assert _leftovers(address) == before, name
        finally:
            _cleanup(address, id)
    assert results[0] == results[1]


def test_ctr_checkpoint_of_a_crun_task_says_why(suite: PrivateSuite, rootfs: Path, scratch: Path) -> None:
    """Debian's crun has no CRIU: the refusal says so, and nothing is left."""
    id = _uid("ckn")
    before = _leftovers(suite.address)
    try:
        suite.ctr("run", "-d", "--runc-binary", "crun", "--rootfs", str(rootfs), id, "/bin/sleep", "1000",
                  check=True)
        res = suite.ctr("task", "checkpoint", id, timeout=120)
        if res.returncode == 0:
            pytest.skip("this crun can checkpoint")
        assert "crun cannot checkpoint (built without CRIU)" in res.stderr, res.stderr
        _wait_status(suite.address, id, "RUNNING")
        assert _leftovers(suite.address) == before
    finally:
        _cleanup(suite.address, id)


def _any_options(**fields: object) -> dict[str, object]:
    return {"type_url": CHECKPOINT_OPTIONS, "value": oci_pb2.CheckpointOptions(**fields).SerializeToString()}


def test_client_checkpoint_calls_side_by_side(suite: PrivateSuite, containerd: ContainerdPeer, rootfs: Path,
                                              scratch: Path) -> None:
    """The Go client's calls: Task.Checkpoint (under its lease, the task paused first) and
    Container.Checkpoint's WithCheckpointTask (options, no lease of its own here), and either
    for a task that does not exist. Same codes and words; nothing left."""
    seen = []
    for name, address in _targets(suite, containerd):
        id = _uid("ckg")
        lease_id = _uid("lease")
        before = _leftovers(address)
        try:
            ctr(address, "run", "-d", "--runc-binary", "runc", "--rootfs", str(rootfs), id, "/bin/sleep", "1000",
                check=True)
            answers = []
            with grpc.insecure_channel(f"unix://{address}") as channel:
                tasks, leases = pbt_grpc.TasksStub(channel), pbl_grpc.LeasesStub(channel)
                leases.Create(pbl.CreateRequest(id=lease_id), metadata=NS)
                leased = NS + [("containerd-lease", lease_id)]
                tasks.Pause(pbt.PauseTaskRequest(container_id=id), metadata=leased)
                calls = [(id, leased, None), (id, NS, _any_options(exit=False)), ("nosuch-" + id, NS, None)]
                for target, md, options in calls:
                    try:
                        tasks.Checkpoint(pbt.CheckpointTaskRequest(container_id=target, options=options),
                                         metadata=md, timeout=120)
                        answers.append(("OK", ""))
                    except grpc.RpcError as exc:
                        details = exc.details() or ""
                        answers.append((exc.code().name, "criu failed" if "criu failed" in details
                                        else details.replace(id, "ID")))
                try:  # (runc leaves the task paused or not after CRIU's refusal: alike on both)
                    tasks.Resume(pbt.ResumeTaskRequest(container_id=id), metadata=NS)
                    answers.append(("OK", "resumed"))
                except grpc.RpcError as exc:
                    answers.append((exc.code().name, exc.details() or ""))
                leases.Delete(pbl.DeleteRequest(id=lease_id, sync=True), metadata=NS)
            _wait_status(address, id, "RUNNING")
            if answers[0][0] != "OK":
                assert _leftovers(address) == before, name
            seen.append(answers)
        finally:
            _cleanup(address, id)
    assert seen[0] == seen[1]
    if seen[0][0][0] != "OK":  # CRIU refuses to dump here
        assert seen[0] == [("UNKNOWN", "criu failed"), ("UNKNOWN", "criu failed"),
                           ("NOT_FOUND", "container \"nosuch-ID\" in namespace \"default\": not found"),
                           ("OK", "resumed")]


def _blob(channel: grpc.Channel, lease: str, data: bytes) -> str:
    """Write ``data`` into the content store under ``lease``; its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ref = _uid("ck-blob")
    reqs = [pbcontent.WriteContentRequest(action=pbcontent.COMMIT, ref=ref, total=len(data), expected=digest,
                                          data=data)]
    list(pbcontent_grpc.ContentStub(channel).Write(iter(reqs), metadata=NS + [("containerd-lease", lease)]))
    return digest


def _fake_checkpoint_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("inventory.img", b"not really CRIU's"), ("descriptors.json", b"[]")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_restore_from_the_content_store_side_by_side(suite: PrivateSuite, containerd: ContainerdPeer,
                                                     rootfs: Path, scratch: Path, containerd_tmp: None) -> None:
    """Tasks.Create with a checkpoint descriptor (``WithTaskCheckpoint``): the media type is
    checked, the blob fetched and unpacked; the task is CREATED with no process, and its Start
    restores it (runc restore), as containerd's shim does. A wrong type, a missing blob, a blob
    that is no tar, and images CRIU cannot read fail alike on both; the delete leaves no task
    and no temporary directory."""
    seen = []
    for name, address in _targets(suite, containerd):
        id = _uid("ckr")
        lease = _uid("lease")
        answers = []
        try:
            ctr(address, "container", "create", "--rootfs", str(rootfs), id, "/bin/sleep", "1000", check=True)
            with grpc.insecure_channel(f"unix://{address}") as channel:
                pbl_grpc.LeasesStub(channel).Create(pbl.CreateRequest(id=lease), metadata=NS)
                not_tar = _blob(channel, lease, b"not a tar at all" * 100)
                fake = _blob(channel, lease, _fake_checkpoint_tar())
                descs = [descriptor_pb2.Descriptor(media_type="application/foo", digest=not_tar, size=1600),
                         descriptor_pb2.Descriptor(media_type=CHECKPOINT_TAR, digest="sha256:" + "a" * 64, size=3),
                         descriptor_pb2.Descriptor(media_type=CHECKPOINT_TAR, digest=not_tar, size=1600),
                         descriptor_pb2.Descriptor(media_type=CHECKPOINT_TAR, digest=fake, size=1)]
                tasks = pbt_grpc.TasksStub(channel)
                runc = {"type_url": "containerd.runc.v1.Options",
                        "value": oci_pb2.Options(binary_name="runc").SerializeToString()}
                create = [lambda d=d: tasks.Create(pbt.CreateTaskRequest(container_id=id, checkpoint=d, options=runc),
                                                   metadata=NS, timeout=120) for d in descs]
                # the restore itself is the start's, as in containerd's shim
                calls = create + [lambda: tasks.Get(pbt.GetRequest(container_id=id), metadata=NS).process.status,
                                  lambda: tasks.Start(pbt.StartRequest(container_id=id), metadata=NS, timeout=120),
                                  lambda: tasks.Delete(pbt.DeleteTaskRequest(container_id=id), metadata=NS,
                                                       timeout=30).exit_status]
                for call in calls:
                    try:
                        out = call()
                        answers.append(("OK", out if isinstance(out, (int, str)) else ""))
                    except grpc.RpcError as exc:
                        details = exc.details() or ""
                        # CRIU's restore error names paths of each daemon's own
                        answers.append((exc.code().name, "restore failed" if "restore failed" in details
                                        else details))
                pbl_grpc.LeasesStub(channel).Delete(pbl.DeleteRequest(id=lease, sync=True), metadata=NS)
            seen.append(answers)
        finally:
            _cleanup(address, id)
    assert seen[0] == seen[1]
    assert seen[0] == [("UNKNOWN", 'unsupported checkpoint type "application/foo"'),
                       ("UNKNOWN", f"content digest sha256:{'a' * 64}: not found"),
                       ("UNKNOWN", "archive/tar: invalid tar header"),
                       ("OK", ""), ("OK", task_pb2.CREATED), ("UNKNOWN", "restore failed"),
                       ("OK", 0)]
