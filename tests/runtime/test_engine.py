"""The runtime engine on real runc and crun, with the real C supervisor; no NATS."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from flotilla.libs.api.runtime import CREATED, PAUSED, RUNNING, STOPPED, Stdio
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, NotFound, Unknown
from flotilla.libs.api.types import Mount
from flotilla.libs.mount import is_mounted
from flotilla.services.runtime import cgroups
from flotilla.services.runtime.engine import TASKS_DIR, Engine
from flotilla.services.runtime.oci import OciRuntime

from .conftest import Recorder, fifo_paths, make_spec, process_spec
from .helpers import fifo_reader

NS = "rt-test"


def _id() -> str:
    return "t-" + uuid.uuid4().hex[:10]


async def test_output_exit_code_and_event_order(engine: tuple[Engine, Recorder], rootfs: Path, tmp_path: Path) -> None:
    eng, rec = engine
    id = _id()
    stdin, stdout, stderr = fifo_paths(tmp_path)
    out: list[bytes] = []
    err: list[bytes] = []
    threads = [fifo_reader(stdout, out), fifo_reader(stderr, err)]
    spec = make_spec(str(rootfs), ["sh", "-c", "echo hi; echo oops >&2; exit 3"])
    info = await eng.create(NS, id, spec, stdio=Stdio(stdin, stdout, stderr))
    assert info.status == CREATED and info.pid > 0
    assert (await eng.start(NS, id)).status == RUNNING
    exit_ = await eng.wait(NS, id)
    assert exit_.exited and exit_.exit_status == 3
    for t in threads:
        t.join(10)
    assert out == [b"hi\n"] and err == [b"oops\n"]
    assert eng.get(NS, id).status == STOPPED
    with pytest.raises(NotFound, match="process already finished"):
        await eng.kill(NS, id, signal=9)
    deleted = await eng.delete(NS, id)
    assert deleted.exit_status == 3
    assert rec.topics(id) == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    with pytest.raises(NotFound):
        eng.get(NS, id)
    assert not (eng.bundle(NS, id)).exists()


async def test_exit_releases_runtime_state_and_rootfs_before_delete(engine: tuple[Engine, Recorder], rootfs: Path,
                                                                  tmp_path: Path) -> None:
    """The init's exit frees the runtime's container, its cgroup and the rootfs mount at once;
    the task stays STOPPED with its exit until deleted, and delete removes the rest."""
    eng, rec = engine
    id = _id()
    spec = make_spec("rootfs", ["sh", "-c", "exit 7"])
    mounts = [Mount("bind", str(rootfs), options=["rbind", "ro"])]
    await eng.create(NS, id, spec, rootfs=mounts)
    bundle = eng.bundle(NS, id)
    assert is_mounted(str(bundle / "rootfs"))
    task = eng.tasks[(NS, id)]
    await eng.start(NS, id)
    assert (await eng.wait(NS, id)).exit_status == 7
    assert task.released is not None
    await asyncio.wait_for(asyncio.shield(task.released), 10)
    assert not is_mounted(str(bundle / "rootfs"))
    assert await task.oci.state(id) is None  # the runtime knows it no more
    path = task.rec.cgroups_path
    assert not (Path("/sys/fs/cgroup") / path.lstrip("/") if cgroups.unified() else cgroups.v1_dir("memory", path)).exists()
    info = eng.get(NS, id)
    assert info.status == STOPPED and info.exit_status == 7
    assert (bundle / "task.json").exists()  # a restarted engine still finds the task
    assert (await eng.delete(NS, id)).exit_status == 7
    assert not bundle.exists()
    assert rec.topics(id) == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]


async def test_stdin_reaches_the_process_and_closes(engine: tuple[Engine, Recorder], rootfs: Path,
                                                    tmp_path: Path) -> None:
    eng, _ = engine
    id = _id()
    stdin, stdout, stderr = fifo_paths(tmp_path)
    out: list[bytes] = []
    reader = fifo_reader(stdout, out)
    await eng.create(NS, id, make_spec(str(rootfs), ["cat"]), stdio=Stdio(stdin, stdout, stderr))
    await eng.start(NS, id)

    def feed() -> None:
        with open(stdin, "wb") as f:
            f.write(b"through stdin\n")
    await asyncio.to_thread(feed)  # closing the FIFO is EOF for cat
    assert (await eng.wait(NS, id)).exit_status == 0
    reader.join(10)
    assert out == [b"through stdin\n"]
    await eng.delete(NS, id)


async def test_exec_kill_pause_resume_pids(engine: tuple[Engine, Recorder], rootfs: Path, tmp_path: Path) -> None:
    eng, rec = engine
    id = _id()
    await eng.create(NS, id, make_spec(str(rootfs), ["sleep", "1000"]))
    with pytest.raises(Unknown, match="cannot pause task in created state"):
        await eng.pause(NS, id)
    await eng.start(NS, id)
    with pytest.raises(Unknown, match="cannot start a running process"):
        await eng.start(NS, id)
    with pytest.raises(AlreadyExists):
        await eng.create(NS, id, make_spec(str(rootfs), ["true"]))
    _, stdout, _ = fifo_paths(tmp_path)
    out: list[bytes] = []
    reader = fifo_reader(stdout, out)
    await eng.exec(NS, id, "e1", process_spec(["sh", "-c", "echo from exec; exit 4"]), Stdio(stdout=stdout))
    with pytest.raises(AlreadyExists):
        await eng.exec(NS, id, "e1", process_spec(["true"]))
    with pytest.raises(FailedPrecondition):
        await eng.kill(NS, id, "e1", 9)
    started = await eng.start(NS, id, "e1")
    assert started.pid > 0
    assert (await eng.wait(NS, id, "e1")).exit_status == 4
    reader.join(10)
    assert out == [b"from exec\n"]
    await eng.delete(NS, id, "e1")
    pids = await eng.pids(NS, id)
    assert [p.pid for p in pids] == [eng.get(NS, id).pid]
    await eng.pause(NS, id)
    assert eng.get(NS, id).status == PAUSED
    await eng.resume(NS, id)
    await eng.update(NS, id, b'{"pids": {"limit": 64}}')
    [metrics] = await eng.metrics(NS, [id])
    assert metrics.stats["pids"] == {"current": 1, "limit": 64}
    assert metrics.stats["memory"]["usage"]["usage"] > 0
    with pytest.raises(Unknown, match="cannot delete a running process"):
        await eng.delete(NS, id)
    await eng.kill(NS, id, signal=9)
    assert (await eng.wait(NS, id)).exit_status == 137
    await eng.delete(NS, id)
    assert rec.topics(id) == ["/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started",
                              "/tasks/exit", "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete"]


async def test_bad_spec_and_missing_rootfs_leave_nothing(engine: tuple[Engine, Recorder], tmp_path: Path) -> None:
    eng, _ = engine
    with pytest.raises(Unknown, match="invalid OCI spec"):
        await eng.create(NS, _id(), b"{not json")
    id = _id()
    with pytest.raises(Unknown, match="OCI runtime create failed"):
        await eng.create(NS, id, make_spec(str(tmp_path / "missing"), ["true"]))
    assert eng.list(NS) == []
    assert not (eng.bundle(NS, id)).exists()


async def _logged(capfd: pytest.CaptureFixture[str], bundle: Path, text: str) -> None:
    """Write ``text`` into the task's log pipe, as a shim would; it must reach our stderr."""
    fd = os.open(bundle / "log", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)
    seen = ""
    for _ in range(250):
        await asyncio.sleep(0.02)
        seen += capfd.readouterr().err
        if text in seen:
            return
    raise AssertionError(f"{text!r} not copied from {bundle / 'log'}")


async def test_restart_readopts_and_reports_missed_exit(shim_binary: Path, oci_runtime: str, rootfs: Path,
                                                        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """... and follows each task's log pipe again (containerd's client suite writes into it
    after a restart and looks for the text in the daemon's output)."""
    rec = Recorder()
    state = tmp_path / "state"
    first = Engine(state, rec, shim_binary)
    keep, gone = _id(), _id()
    flag = rootfs / "tmp" / gone
    script = f"while [ ! -e /tmp/{gone} ]; do sleep 0.02; done; exit 5"
    for id, args in ((keep, ["sleep", "1000"]), (gone, ["sh", "-c", script])):
        await first.create(NS, id, make_spec(str(rootfs), args))
        await first.start(NS, id)
    await _logged(capfd, first.bundle(NS, keep), "written in the first life")
    await first.close()  # the service "dies"; supervisors live on
    del first
    flag.touch()  # the container exits while no service watches it
    exit_file = state / TASKS_DIR / NS / gone / "exit"
    while not exit_file.exists():
        await asyncio.sleep(0.02)
    rec.events.clear()
    second = Engine(state, rec, shim_binary)
    try:
        assert await second.recover() == 2
        assert second.get(NS, keep).status == RUNNING
        assert second.get(NS, gone).status == STOPPED
        await _logged(capfd, second.bundle(NS, keep), "written in the second life")
        assert (await second.wait(NS, gone)).exit_status == 5
        assert rec.topics(gone) == ["/tasks/exit"]
        assert rec.events[0][2]["exit_status"] == 5
        await second.exec(NS, keep, "x", process_spec(["true"]))
        await second.start(NS, keep, "x")
        assert (await second.wait(NS, keep, "x")).exit_status == 0
        await second.kill(NS, keep, signal=9)
        assert (await second.wait(NS, keep)).exit_status == 137
        # a third life reports nothing twice
        rec.events.clear()
        third = Engine(state, rec, shim_binary)
        assert await third.recover() == 2
        assert rec.events == []
        await third.close()
    finally:
        for id in (keep, gone):
            try:
                await second.kill(NS, id, signal=9)
            except NotFound:
                pass
            await second.wait(NS, id)
            await second.delete(NS, id)
        await second.close()
        flag.unlink()


async def test_output_nobody_reads_never_wedges_the_exit(engine: tuple[Engine, Recorder], rootfs: Path,
                                                         tmp_path: Path) -> None:
    """``ctr run -d`` leaves FIFOs nobody reads: a chatty process fills them and is stalled
    (back-pressure), yet its supervisor still reaps a kill and records the exit."""
    eng, _ = engine
    id = _id()
    _, stdout, stderr = fifo_paths(tmp_path)
    info = await eng.create(NS, id, make_spec(str(rootfs), ["sh", "-c", "while true; do echo flood; done"]),
                            stdio=Stdio(stdout=stdout, stderr=stderr))
    await eng.start(NS, id)
    # the FIFO and the pipe fill up; the process then sleeps in a pipe write
    while "pipe_write" not in await asyncio.to_thread(_wchan, info.pid):
        await asyncio.sleep(0.02)
    await eng.kill(NS, id, signal=9)
    # bounded only so a regression fails instead of hanging the run
    assert (await asyncio.wait_for(eng.wait(NS, id), 60)).exit_status == 137
    await eng.delete(NS, id)


def _wchan(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


async def test_delete_of_a_created_task_kills_it_with_one_runtime_delete(
        engine: tuple[Engine, Recorder], rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task created and never started is killed and removed by its delete (containerd's
    createdState.Delete): one forced delete of the OCI runtime, which its exit would start
    anyway, not one by the delete and a second by the exit."""
    eng, rec = engine
    id = _id()
    deletes: list[tuple[str, bool]] = []
    runtime_delete = OciRuntime.delete

    async def counted(self: OciRuntime, cid: str, force: bool = False) -> None:
        deletes.append((cid, force))
        await runtime_delete(self, cid, force)
    monkeypatch.setattr(OciRuntime, "delete", counted)
    spec = make_spec("rootfs", ["sleep", "1000"])
    info = await eng.create(NS, id, spec, rootfs=[Mount("bind", str(rootfs), options=["rbind", "ro"])])
    bundle = eng.bundle(NS, id)
    assert info.status == CREATED and is_mounted(str(bundle / "rootfs"))
    deleted = await eng.delete(NS, id)
    assert deletes == [(id, True)]
    assert deleted.exit_status == 137  # SIGKILL, as containerd reports it
    assert rec.topics(id) == ["/tasks/create", "/tasks/exit", "/tasks/delete"]
    assert not Path(f"/proc/{info.pid}").exists() and not bundle.exists()
