"""Issue 25: what containerd's own client tests expect of a task, on the engine (both runtimes).

A terminal with no stderr FIFO, CloseIO and resize once the process is gone, runc options
(BinaryName, Root, SystemdCgroup, ShimCgroup) with containerd's errors, and nothing left
behind by a create that fails half-way.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.libs.api.runtime import Stdio
from flotilla.libs.api.types import Mount
from flotilla.libs.errors import NotFound, Unknown
from flotilla.libs.mount import is_mounted
from flotilla.services.runtime import cgroups, supervisor
from flotilla.services.runtime.engine import Engine
from flotilla.services.runtime.oci import OciRuntime

from .conftest import Recorder, fifo_paths, make_spec, process_spec
from .helpers import fifo_reader

NS = "rt-peer"


def _id() -> str:
    return "p-" + uuid.uuid4().hex[:10]


async def test_terminal_needs_no_stderr_fifo(engine: tuple[Engine, Recorder], rootfs: Path, tmp_path: Path) -> None:
    """With a terminal, containerd's cio makes no stderr FIFO (its path is still sent): the
    supervisor must not open it (TestContainerPTY: "open stderr fifo: No such file")."""
    eng, _ = engine
    id = _id()
    stdin, stdout, _ = fifo_paths(tmp_path)
    no_stderr = str(tmp_path / "never-made-stderr")
    out: list[bytes] = []
    reader = fifo_reader(stdout, out)
    spec = make_spec(str(rootfs), ["sh", "-c", "tty; echo to-err >&2"], terminal=True)
    await eng.create(NS, id, spec, stdio=Stdio(stdin, stdout, no_stderr, terminal=True))
    await eng.start(NS, id)
    assert (await eng.wait(NS, id)).exit_status == 0
    reader.join(10)
    assert b"/dev/pts/" in out[0] and b"to-err" in out[0]  # stderr goes through the pty
    assert not Path(no_stderr).exists()
    await eng.delete(NS, id)


async def test_exec_terminal_comes_from_the_request(engine: tuple[Engine, Recorder], rootfs: Path,
                                                    tmp_path: Path) -> None:
    """TestContainerExecLargeOutputWithTTY execs the container's process spec (terminal false)
    with a terminal IO: containerd's shim sets the spec's terminal from the request. Before,
    runc refused the console socket, and crun ran the process without a tty while its
    supervisor waited for the pty forever (the client's Start never returned)."""
    eng, _ = engine
    id = _id()
    await eng.create(NS, id, make_spec(str(rootfs), ["sleep", "1000"]))
    await eng.start(NS, id)
    stdin, stdout, _ = fifo_paths(tmp_path)
    out: list[bytes] = []
    reader = fifo_reader(stdout, out)
    await eng.exec(NS, id, "e1", process_spec(["tty"], terminal=False),
                   Stdio(stdin, stdout, str(tmp_path / "no-stderr"), terminal=True))
    await asyncio.wait_for(eng.start(NS, id, "e1"), 60)  # bounded: a regression fails, not hangs
    assert (await eng.wait(NS, id, "e1")).exit_status == 0
    reader.join(10)
    assert out[0].startswith(b"/dev/pts/")
    await eng.kill(NS, id, signal=9)
    await eng.wait(NS, id)
    await eng.delete(NS, id)


async def test_supervisor_never_waits_forever_for_a_pty(shim_binary: Path, tmp_path: Path) -> None:
    """A runtime command that succeeds without sending the pty master: the supervisor fails
    (it waited in accept() for ever) and ends the process left without its terminal."""
    script = f"sleep 1000 & echo $! > {tmp_path}/pid"
    with pytest.raises(supervisor.SupervisorFailed, match="receive console master"):
        await asyncio.wait_for(supervisor.spawn(shim_binary, tmp_path, Stdio(terminal=True),
                                                ["/bin/sh", "-c", script, "sh", "@CONSOLE@"]), 60)
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


async def test_close_io_and_resize_once_the_process_is_gone(engine: tuple[Engine, Recorder], rootfs: Path,
                                                            tmp_path: Path) -> None:
    """containerd accepts CloseIO in any state and resizes an init's console until its
    delete; TestContainerAttach closes stdin (its EOF ends ``cat``) and then calls CloseIO,
    which came when the supervisor was gone and its exit not yet seen: NotFound."""
    eng, _ = engine
    id = _id()
    stdin, _, _ = fifo_paths(tmp_path)
    await eng.create(NS, id, make_spec(str(rootfs), ["cat"]), stdio=Stdio(stdin=stdin))
    await eng.start(NS, id)
    shim_pid = eng.tasks[(NS, id)].init.rec.shim_pid
    # the event loop is held (no await) so the engine cannot notice the exit before CloseIO
    with open(stdin, "wb"):
        pass  # EOF: cat exits, its supervisor too
    deadline = time.monotonic() + 30
    while supervisor.is_supervisor(shim_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.tasks[(NS, id)].init.exit is None
    await eng.close_io(NS, id, "")
    await eng.resize(NS, id, "", 80, 24)
    assert (await eng.wait(NS, id)).exit_status == 0
    await eng.close_io(NS, id, "")
    await eng.resize(NS, id, "", 100, 30)  # the init: accepted, as containerd's console resize
    await eng.delete(NS, id)


async def test_resize_of_a_stopped_exec_is_refused(engine: tuple[Engine, Recorder], rootfs: Path) -> None:
    eng, _ = engine
    id = _id()
    await eng.create(NS, id, make_spec(str(rootfs), ["sleep", "1000"]))
    await eng.start(NS, id)
    await eng.exec(NS, id, "e1", process_spec(["true"]))
    await eng.start(NS, id, "e1")
    assert (await eng.wait(NS, id, "e1")).exit_status == 0
    with pytest.raises(Unknown, match="cannot resize a stopped container"):
        await eng.resize(NS, id, "e1", 80, 24)
    await eng.close_io(NS, id, "e1")
    await eng.delete(NS, id, "e1")
    await eng.kill(NS, id, signal=9)
    await eng.wait(NS, id)
    await eng.delete(NS, id)


@pytest.mark.parametrize("binary, runtime_name, text", [
    ("no-runc", "io.containerd.runc.v2",
     ('failed to create shim task: OCI runtime create failed: unable to retrieve OCI runtime error '
      '(open BUNDLE/log.json: no such file or directory): exec: "no-runc": executable file not found in $PATH: '
      'unknown')),
    ("/nowhere/runc", "io.containerd.runtime.v1.linux",  # v1's runtime: no "shim task" prefix
     ('OCI runtime create failed: unable to retrieve OCI runtime error (open BUNDLE/log.json: no such file or '
      'directory): fork/exec /nowhere/runc: no such file or directory: unknown')),
])
async def test_missing_runtime_binary_fails_as_containerd_and_leaves_nothing(
        engine: tuple[Engine, Recorder], rootfs: Path, binary: str, runtime_name: str, text: str) -> None:
    """A create whose runtime binary is missing: go-runc's error (TestContainerRuntimeOptionsv1/2
    look for the quoted name), and its rootfs overlay is not left mounted in the state dir
    (the cleanup's own runtime delete failed too, and hid the unmount)."""
    eng, rec = engine
    id = _id()
    bundle = eng.bundle(NS, id)
    spec = make_spec("rootfs", ["true"])
    with pytest.raises(Unknown) as err:
        await eng.create(NS, id, spec, runtime_name, binary,
                         rootfs=[Mount("bind", str(rootfs), options=["rbind", "ro"])])
    assert err.value.message == text.replace("BUNDLE", str(bundle))
    assert not is_mounted(str(bundle / "rootfs")) and not bundle.exists()
    assert eng.list(NS) == [] and rec.topics(id) == []
    assert not (eng.base / "oci" / Path(binary).name).exists()
    # the id is free again
    await eng.create(NS, id, spec, rootfs=[Mount("bind", str(rootfs), options=["rbind", "ro"])])
    await eng.delete(NS, id)


async def test_root_option_is_runcs_root_per_namespace(engine: tuple[Engine, Recorder], rootfs: Path,
                                                       tmp_path: Path) -> None:
    """runc options' Root is the runtime's root below which each namespace has its own, as in
    containerd's shims. A client naming it may work on that state with runc itself
    (TestKillContainerDeletedByRunc deletes the container there), so the task runs on runc,
    containerd's default, whatever ours is; a kill then finds no container."""
    eng, _ = engine
    id = _id()
    root = tmp_path / "runtime-root"
    await eng.create(NS, id, make_spec(str(rootfs), ["sleep", "1000"]), root=str(root))
    task = eng.tasks[(NS, id)]
    assert task.oci.root == root / NS and task.oci.binary == "runc"
    await eng.start(NS, id)
    await asyncio.to_thread(subprocess.run, ["runc", "--root", str(root / NS), "delete", "--force", id], check=True)
    with pytest.raises(NotFound):
        await eng.kill(NS, id, signal=9)
    assert (await eng.wait(NS, id)).exit_status == 137
    await eng.delete(NS, id)


def test_systemd_cgroup_option_reaches_every_runtime_command() -> None:
    """runc's (and crun's) --systemd-cgroup is a global flag, passed on every command as
    go-runc does; the task's cgroup is then where systemd puts ``slice:prefix:name``."""
    argv = OciRuntime("runc", Path("/r"), systemd_cgroup=True).argv("state", "x")
    assert argv[1:] == ["--root", "/r", "--systemd-cgroup", "state", "x"]
    assert "--systemd-cgroup" not in OciRuntime("runc", Path("/r")).argv("state", "x")
    assert cgroups.systemd_path("system.slice:ctr:abc") == "/system.slice/ctr-abc.scope"
    assert cgroups.systemd_path(":ctr:abc") == "/system.slice/ctr-abc.scope"
    assert cgroups.systemd_path("a-b.slice:p:n") == "/a.slice/a-b.slice/p-n.scope"
    assert cgroups.systemd_path("-.slice:p:n.slice") == "/n.slice"
    assert cgroups.systemd_path("/default/abc") == "/default/abc"


def _hierarchies() -> list[Path]:
    """Where the test makes its shim cgroup (not cpuset: a new one there has no cpus yet)."""
    if cgroups.unified():
        return [cgroups.ROOT]
    return [cgroups.ROOT / c for c in ("devices", "memory", "pids")]


@pytest.fixture
def shim_cgroup() -> Iterator[str]:
    path = f"/flotilla-test/shim-{uuid.uuid4().hex[:10]}"
    dirs = [h / path.lstrip("/") for h in _hierarchies()]
    for d in dirs:
        d.mkdir(parents=True)
    yield path
    for d in dirs:  # the supervisors have left it by now (the task's delete waited for them)
        d.rmdir()


def _procs(path: str) -> list[int]:
    return [int(p) for p in (_hierarchies()[0] / path.lstrip("/") / "cgroup.procs").read_text().split()]


async def test_supervisors_join_the_shim_cgroup(engine: tuple[Engine, Recorder], rootfs: Path,
                                                shim_cgroup: str) -> None:
    """runc options' ShimCgroup: the supervisor is placed there as containerd places its shim
    (TestShimInCgroup), and so are those of exec'd processes; the container is not."""
    eng, _ = engine
    id = _id()
    info = await eng.create(NS, id, make_spec(str(rootfs), ["sleep", "1000"]), shim_cgroup=shim_cgroup)
    task = eng.tasks[(NS, id)]
    assert _procs(shim_cgroup) == [task.init.rec.shim_pid]
    await eng.start(NS, id)
    await eng.exec(NS, id, "e1", process_spec(["sleep", "1000"]))
    await eng.start(NS, id, "e1")
    assert sorted(_procs(shim_cgroup)) == sorted([task.init.rec.shim_pid, task.execs["e1"].rec.shim_pid])
    assert info.pid not in _procs(shim_cgroup)
    await eng.kill(NS, id, signal=9, all=True)
    await eng.wait(NS, id, "e1")
    await eng.wait(NS, id)
    await eng.delete(NS, id)
    deadline = time.monotonic() + 30
    while _procs(shim_cgroup) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def test_missing_shim_cgroup_fails_the_create_and_leaves_nothing(
        engine: tuple[Engine, Recorder], rootfs: Path) -> None:
    eng, _ = engine
    id = _id()
    path = f"/flotilla-test/none-{uuid.uuid4().hex[:10]}"
    bundle = eng.bundle(NS, id)
    with pytest.raises(Unknown) as err:
        await eng.create(NS, id, make_spec("rootfs", ["sleep", "1000"]), shim_cgroup=path,
                         rootfs=[Mount("bind", str(rootfs), options=["rbind", "ro"])])
    # cgroup v1 finds it in no hierarchy; v2 fails to write into it
    assert re.match(f"failed to start shim: start failed: failed to (load|join) cgroup {path}: ", err.value.message)
    assert not is_mounted(str(bundle / "rootfs")) and not bundle.exists() and eng.list(NS) == []
