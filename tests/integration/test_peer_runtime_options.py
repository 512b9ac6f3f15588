"""Issue 25: task calls of containerd's client test suite, side by side with containerd.

runc options (v2 BinaryName, v1 RuncOptions.Runtime, ShimCgroup) as containerd's runtimes
read them, a terminal task with no stderr FIFO, CloseIO and ResizePty of a stopped task, and
nothing left mounted by a create that failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pbc
from flotilla._api.containerd.api.services.containers.v1 import containers_pb2_grpc as pbc_grpc
from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2 as pbt
from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2_grpc as pbt_grpc
from flotilla._api.containerd.api.types import mount_pb2
from flotilla._api.containerd.runtime.linux.runctypes import runc_pb2
from flotilla._api.containerd.runtime.v2.runc.options import oci_pb2
from flotilla.testing import CTR, ContainerdPeer, PrivateSuite, ctr

NS = [("containerd-namespace", "default")]
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
pytestmark = pytest.mark.usefixtures("no_supervisor_left")


def _uid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def _targets(suite: PrivateSuite, peer: ContainerdPeer) -> list[tuple[str, str]]:
    return [("flotilla", suite.address), ("containerd", peer.address)]


def _spec(address: str, id: str, args: list[str], terminal: bool = False) -> bytes:
    spec = json.loads(subprocess.run([CTR, "--address", address, "oci", "spec"], capture_output=True, text=True,
                                     check=True).stdout)
    spec["root"] = {"path": "rootfs"}
    spec["process"]["args"], spec["process"]["terminal"] = args, terminal
    spec["linux"]["cgroupsPath"] = f"/default/{id}"
    return json.dumps(spec).encode()


class _Api:
    """The Containers and Tasks services of one daemon, as containerd's Go client calls them."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.containers = pbc_grpc.ContainersStub(self.channel)
        self.tasks = pbt_grpc.TasksStub(self.channel)

    def container(self, id: str, spec: bytes, runtime: str = "io.containerd.runc.v2",
                  options: any_pb2.Any | None = None) -> None:
        rt = pbc.Container.Runtime(name=runtime)
        if options is not None:
            rt.options.CopyFrom(options)
        self.containers.Create(pbc.CreateContainerRequest(container=pbc.Container(
            id=id, runtime=rt, spec=any_pb2.Any(type_url=SPEC_URL, value=spec))), metadata=NS, timeout=30)

    def create(self, id: str, rootfs: Path, **kw: object) -> pbt.CreateTaskResponse:
        mount = mount_pb2.Mount(type="bind", source=str(rootfs), options=["rbind", "ro"])
        return self.tasks.Create(pbt.CreateTaskRequest(container_id=id, rootfs=[mount], **kw),  # type: ignore[arg-type]
                                 metadata=NS, timeout=60)

    def cleanup(self, id: str) -> None:
        ctr(self.address, "task", "kill", "-s", "9", id)
        ctr(self.address, "task", "rm", "-f", id)
        ctr(self.address, "containers", "rm", id)
        self.channel.close()


def _failure(call) -> str:  # type: ignore[no-untyped-def]
    try:
        call()
    except grpc.RpcError as exc:
        return f"{exc.code().name}|{exc.details()}"
    return "OK"


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(path) in line]


@pytest.mark.parametrize("runtime, options", [
    ("io.containerd.runc.v2", any_pb2.Any(type_url="containerd.runc.v1.Options",
                                          value=oci_pb2.Options(binary_name="no-runc").SerializeToString())),
    ("io.containerd.runtime.v1.linux", any_pb2.Any(type_url="containerd.linux.runc.RuncOptions",
                                                   value=runc_pb2.RuncOptions(runtime="no-runc").SerializeToString())),
])
def test_missing_runtime_binary_fails_as_containerd_and_leaves_nothing_mounted(
        suite: PrivateSuite, containerd: ContainerdPeer, rootfs: Path, runtime: str, options: any_pb2.Any) -> None:
    """TestContainerRuntimeOptionsv1/v2: runc options naming a binary that is not there fail
    the create with go-runc's words (the name quoted). The rootfs mounted for it must not
    stay mounted under the runtime's state (the cleanup's runtime delete failed and hid it)."""
    texts = {}
    for name, address in _targets(suite, containerd):
        api, id = _Api(address), _uid("nobin")
        try:
            api.container(id, _spec(address, id, ["/bin/true"]), runtime, options)
            texts[name] = _failure(lambda: api.create(id, rootfs))
            assert id not in ctr(address, "task", "ls", "-q").stdout.split()
        finally:
            api.cleanup(id)
    # the same but for where each keeps the bundle's log
    norm = {k: re.sub(r"\(open /\S+/log\.json:", "(open LOG:", re.sub(r"nobin-[0-9a-f]{8}", "ID", v))
            for k, v in texts.items()}
    assert norm["flotilla"] == norm["containerd"]
    assert 'exec: "no-runc": executable file not found in $PATH' in texts["flotilla"]
    assert _mounts_under(suite.suite.state / "runtime") == []
    assert not (suite.suite.state / "runtime" / "oci" / "no-runc").exists()


@pytest.fixture
def shim_cgroup() -> Iterator[str]:
    """An existing cgroup for the shims (not in cpuset: a new one there has no cpus yet)."""
    root = Path("/sys/fs/cgroup")
    path = f"flotilla-test/peer-shim-{uuid.uuid4().hex[:8]}"
    dirs = [root / path] if (root / "cgroup.controllers").exists() else \
        [root / c / path for c in ("devices", "memory", "pids")]
    for d in dirs:
        d.mkdir(parents=True)
    yield "/" + path
    for d in dirs:
        deadline = time.monotonic() + 30  # containerd's shim leaves a moment after the delete
        while (d / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        d.rmdir()
        if not any(p.is_dir() for p in d.parent.iterdir()):
            d.parent.rmdir()


def _procs(cgroup: str) -> list[int]:
    root = Path("/sys/fs/cgroup")
    base = root if (root / "cgroup.controllers").exists() else root / "devices"
    return [int(p) for p in (base / cgroup.lstrip("/") / "cgroup.procs").read_text().split()]


def test_shim_cgroup_holds_the_supervisor_as_containerds_shim(
        suite: PrivateSuite, containerd: ContainerdPeer, rootfs: Path, shim_cgroup: str) -> None:
    """TestShimInCgroup: the task's options name an existing cgroup; the process holding the
    task's stdio (containerd's shim, our supervisor) is in it, the container is not."""
    options = any_pb2.Any(type_url="containerd.runc.v1.Options",
                          value=oci_pb2.Options(shim_cgroup=shim_cgroup).SerializeToString())
    for name, address in _targets(suite, containerd):
        api, id = _Api(address), _uid("shimcg")
        try:
            api.container(id, _spec(address, id, ["/bin/sleep", "1000"]))
            pid = api.create(id, rootfs, options=options).pid
            inside = _procs(shim_cgroup)
            assert inside and pid not in inside, name
            assert all(b"shim" in Path(f"/proc/{p}/cmdline").read_bytes() for p in inside), name
        finally:
            api.cleanup(id)


def test_terminal_task_without_stderr_fifo_and_calls_after_its_exit(
        suite: PrivateSuite, containerd: ContainerdPeer, rootfs: Path, tmp_path: Path) -> None:
    """TestContainerPTY: with a terminal the client makes no stderr FIFO (it still sends the
    path). TestContainerAttach: CloseIO, and a resize of the init, still succeed once it exited."""
    for name, address in _targets(suite, containerd):
        api, id = _Api(address), _uid("pty")
        stdout, stderr = tmp_path / f"{id}-stdout", tmp_path / f"{id}-stderr"
        os.mkfifo(stdout)
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(stdout.read_bytes()), daemon=True)
        reader.start()
        try:
            api.container(id, _spec(address, id, ["/bin/sh", "-c", "echo on-the-pty"], terminal=True))
            api.create(id, rootfs, stdout=str(stdout), stderr=str(stderr), terminal=True)
            api.tasks.Start(pbt.StartRequest(container_id=id), metadata=NS, timeout=30)
            api.tasks.Wait(pbt.WaitRequest(container_id=id), metadata=NS, timeout=30)
            reader.join(30)
            assert out and b"on-the-pty" in out[0], name
            assert not stderr.exists(), name
            assert _failure(lambda: api.tasks.CloseIO(pbt.CloseIORequest(container_id=id, stdin=True),
                                                      metadata=NS, timeout=30)) == "OK", name
            assert _failure(lambda: api.tasks.ResizePty(pbt.ResizePtyRequest(container_id=id, width=80, height=24),
                                                        metadata=NS, timeout=30)) == "OK", name
            api.tasks.Delete(pbt.DeleteTaskRequest(container_id=id), metadata=NS, timeout=30)
        finally:
            api.cleanup(id)
