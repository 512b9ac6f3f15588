"""The runtime engine: tasks on an OCI runtime, each process under its own supervisor.

Importable and testable without NATS: events go through the ``publish`` callable it is given.
Every process runs under a ``flotilla-shim`` (see supervisor.py), so the engine holds no
container's stdio or exit: it can be killed and restarted at any time, and ``recover``
re-adopts what is still running and reports exits that happened meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from flotilla.libs.api import events as ev
from flotilla.libs.api.runtime import (
    CREATED, PAUSED, RUNC_V2, RUNNING, STOPPED, CheckpointResult, Exit, Mount, PidInfo, ProcessInfo, Stdio,
    TaskMetrics, task_not_found,
)
from flotilla.libs.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unknown,
)
from flotilla.libs.identifiers import validate_identifier

from . import cgroups, mounts, shimlog, supervisor
from .choice import binary_for, create_failed, default_binary, spawn_error, unknown
from .initproc import spawn_init
from .oci import OciRuntime, RuntimeFailed, exec_error
from .state import Proc, ProcRecord, Task, TaskRecord, load_proc, read_exit, save_proc, set_console_size

log = logging.getLogger("flotilla.runtime")

Publish = Callable[[str, ev.EventRecord], Awaitable[None]]  # (namespace, event)
KILL_RACE_WAIT = 2.0  # seconds a failed kill waits for the exit that may explain it
# tasks' bundles where containerd's runtime v2 keeps them (its client suite looks there for
# the log pipe): <state>/<this>/<ns>/<id>; earlier releases kept them in runtime/tasks
TASKS_DIR, LEGACY_TASKS_DIR = "io.containerd.runtime.v2.task", "runtime/tasks"


class Engine:
    def __init__(self, state: Path, publish: Publish, shim: Path | None = None) -> None:
        self.state, self.base = state, state / "runtime"
        self.logs = shimlog.ShimLogs()
        self.publish = publish
        self.shim = shim or supervisor.locate()
        self.tasks: dict[tuple[str, str], Task] = {}
        self._watchers: set[asyncio.Future[None]] = set()

    # -- helpers -----------------------------------------------------------------------

    def bundle(self, ns: str, id: str) -> Path:
        return self.state / TASKS_DIR / ns / id

    def _task(self, ns: str, id: str) -> Task:
        task = self.tasks.get((ns, id))
        if task is None or task.deleted:
            raise task_not_found(id)
        return task

    def _proc(self, task: Task, exec_id: str) -> Proc:
        if not exec_id:
            return task.init
        proc = task.execs.get(exec_id)
        if proc is None:
            raise NotFound(f"process {exec_id} does not exist: not found")
        return proc

    async def _event(self, ns: str, event: ev.EventRecord) -> None:
        try:
            await self.publish(ns, event)
        except Exception:  # an event lost must not fail the call that changed the state
            log.exception("publishing %s failed", event.TOPIC)

    def _watch(self, task: Task, proc: Proc) -> None:
        fut = supervisor.watch(proc.rec.shim_pid)
        self._watchers.add(fut)

        def done(f: asyncio.Future[None]) -> None:
            self._watchers.discard(f)
            if not f.cancelled():
                t = asyncio.ensure_future(self._exited(task, proc))
                self._watchers.add(t)  # type: ignore[arg-type]
                t.add_done_callback(self._watchers.discard)  # type: ignore[arg-type]
        fut.add_done_callback(done)

    async def _exited(self, task: Task, proc: Proc) -> None:
        """The supervisor is gone: take the exit it recorded and report it once."""
        async with proc.lock:
            await self._report_exit(task, proc)
            proc.exited.set()  # after the event: a waiter's next step (delete) comes after it
        if proc is task.init and not task.deleted:
            self._release(task)

    def _release(self, task: Task) -> "asyncio.Future[None]":
        """Once the init has exited, the runtime's container (and its cgroup) and the rootfs
        mount go at once, while the client still reads the exit: ``ctr run --rm`` deletes
        the task a few ms later and finds only the bundle's files left to remove. Runs once;
        started by the exit or by the delete, whichever comes first."""
        if task.released is None:
            task.released = fut = asyncio.ensure_future(self._free(task))
            self._watchers.add(fut)
            # its error is the delete's to report; nobody may be waiting yet
            fut.add_done_callback(lambda f: (self._watchers.discard(f), f.cancelled() or f.exception()))
        return task.released

    async def _free(self, task: Task) -> None:
        for e in list(task.execs.values()):  # (a host pid namespace lets them outlive the init)
            if e.rec.started and e.exit is None:
                await e.exited.wait()
        await task.oci.delete(task.rec.id, force=True)
        await asyncio.to_thread(mounts.unmount_rootfs, task.bundle)

    def _exit_facts(self, task: Task, proc: Proc) -> tuple[tuple[int, int] | None, bool, int]:
        """One trip to a thread on every exit: the recorded exit, whether it was reported,
        and the OOM kills of the task's cgroup (init only)."""
        recorded = read_exit(proc.exit_file) if proc.exit is None else None
        reported = proc.reported_file.exists()
        kills = 0
        if proc is task.init and task.rec.cgroups_path and not reported:
            kills = cgroups.oom_kills(task.rec.cgroups_path)
        return recorded, reported, kills

    async def _report_exit(self, task: Task, proc: Proc) -> None:
        """Called with proc.lock held: record the exit if not yet known, publish it once."""
        if task.deleted:
            return
        recorded, reported, kills = await asyncio.to_thread(self._exit_facts, task, proc)
        if proc.exit is None:
            # a supervisor killed without recording: containerd reports a dead shim as 255
            status, at = recorded or (255, time.time_ns())
            proc.set_exit(proc.rec.pid, status, at)
        if reported or proc.exit is None:
            return
        ns, id = task.rec.namespace, task.rec.id
        if kills:
            await self._event(ns, ev.TaskOOM(id))
        await self._event(ns, ev.TaskExit(id, proc.rec.exec_id or id, proc.exit.pid, proc.exit.exit_status,
                                          proc.exit.exited_at_ns))
        try:
            await asyncio.to_thread(proc.reported_file.touch)
        except OSError:
            pass  # the task was deleted meanwhile

    # -- create / start / delete -------------------------------------------------------

    async def create(self, ns: str, id: str, spec_json: bytes, runtime_name: str = RUNC_V2, binary: str = "",
                     rootfs: list[Mount] | None = None, stdio: Stdio | None = None,
                     checkpoint: str = "", root: str = "", systemd_cgroup: bool = False,
                     shim_cgroup: str = "") -> ProcessInfo:
        """``binary``, ``root``, ``systemd_cgroup``, ``shim_cgroup``: the runc options' (v1's too)."""
        validate_identifier(ns)
        validate_identifier(id)
        stdio = stdio or Stdio()
        rootfs = rootfs or []
        if (ns, id) in self.tasks and not self.tasks[(ns, id)].deleted:
            raise AlreadyExists(f"task {id}: already exists")
        try:
            spec = json.loads(spec_json or b"null")
        except ValueError as exc:
            # containerd's shim fails to read such a spec and answers Unknown
            raise unknown(f"failed to start shim: invalid OCI spec: {exc}") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
            raise unknown("failed to start shim: invalid OCI spec: no process")
        bundle = self.bundle(ns, id)
        name = binary_for(runtime_name, binary, root)
        # a Root option is the runtime's root for every namespace, as containerd's shims use it
        oci = OciRuntime(name, Path(root) / ns if root else self.base / "oci" / Path(name).name / ns,
                         systemd_cgroup)
        cgroups_path = str((spec.get("linux") or {}).get("cgroupsPath") or "")
        rec = TaskRecord(namespace=ns, id=id, runtime_name=runtime_name or RUNC_V2, binary=name,
                         root=str(oci.root),
                         cgroups_path=cgroups.systemd_path(cgroups_path) if systemd_cgroup else cgroups_path,
                         rootfs=rootfs, checkpoint=checkpoint, init=ProcRecord(stdio=stdio),
                         systemd_cgroup=systemd_cgroup, shim_cgroup=shim_cgroup)
        task = Task(bundle, rec, Proc(bundle, rec.init))
        self.tasks[(ns, id)] = task  # reserved: a concurrent create of the same id fails
        try:
            async with task.lock:
                await self._create(task, spec_json, str((spec.get("root") or {}).get("path") or ""), oci)
        except BaseException:
            self.tasks.pop((ns, id), None)
            raise
        await self._event(ns, ev.TaskCreate(id, str(bundle), list(rootfs), stdio, checkpoint, task.init.rec.pid))
        return task.init.info(id)

    async def _create(self, task: Task, spec_json: bytes, root_path: str, oci: OciRuntime) -> None:
        bundle, rec = task.bundle, task.rec
        root = bundle / root_path  # an absolute path stays itself

        def prepare() -> bool:  # one trip to a thread: this is on every container's start path
            if bundle.exists():  # left by a task whose delete was interrupted
                mounts.remove_bundle_now(bundle)
            (bundle / "rootfs").mkdir(parents=True)
            if not exec_error(oci.binary):  # a binary that cannot run gets no root dir left behind
                oci.root.mkdir(parents=True, exist_ok=True)
            (bundle / "config.json").write_bytes(spec_json)
            shimlog.make(bundle)
            if rec.rootfs:
                mounts.mount_rootfs(rec.rootfs, bundle / "rootfs")
            task.save()
            return bool(rec.rootfs) or root.exists()  # mounts land in bundle/rootfs, made above
        try:
            if not await asyncio.to_thread(prepare):
                # runc's check, done here for every runtime: crun fails later, on a confusing cgroup error
                raise create_failed(rec.runtime_name, f"OCI runtime create failed: {oci.name} create failed: "
                                     f"invalid rootfs: stat {root}: no such file or directory")
            if not rec.checkpoint:  # a restore runs at the start (initproc)
                await spawn_init(self.shim, task, oci)
            task.init.status = CREATED
            await asyncio.to_thread(task.save)
        except BaseException:
            await self._undo_create(oci, rec.id, bundle, rec.init.shim_pid)
            raise
        self.logs.follow(bundle)
        if rec.init.shim_pid:
            self._watch(task, task.init)

    async def _undo_create(self, oci: OciRuntime, id: str, bundle: Path, shim_pid: int = 0) -> None:
        """Leave nothing of a create that failed half-way (container, supervisor, rootfs mount,
        bundle), whatever the runtime answers: its binary may be missing, say."""
        try:
            await oci.delete(id, force=True)
        except (RuntimeFailed, OSError) as exc:
            log.warning("deleting %s after its failed create: %s", id, exc)
        if shim_pid:  # it leaves once the killed process is reaped; it writes in the bundle till then
            try:
                await asyncio.wait_for(supervisor.watch(shim_pid), 10)
            except asyncio.TimeoutError:
                log.warning("the supervisor of %s outlived its failed create", id)
        self.logs.forget(bundle)
        await mounts.remove_bundle(bundle)

    async def start(self, ns: str, id: str, exec_id: str = "") -> ProcessInfo:
        task = self._task(ns, id)
        if exec_id:
            return await self._start_exec(task, self._proc(task, exec_id))
        proc = task.init
        async with task.lock, proc.lock:
            if proc.status == RUNNING or proc.status == PAUSED:
                raise unknown(f"cannot start a {'running' if proc.status == RUNNING else 'paused'} process")
            if proc.status == STOPPED:
                raise unknown("cannot start a stopped process")
            if task.rec.checkpoint and not proc.rec.shim_pid:
                await spawn_init(self.shim, task, task.oci)  # restored now, running at once
                proc.rec.started = True
                await asyncio.to_thread(task.save)
                self._watch(task, proc)
            else:
                try:
                    await task.oci.start(id)
                except RuntimeFailed as exc:
                    raise unknown(f"OCI runtime start failed: {exc.text}") from None
                proc.rec.started = True  # not saved: after a restart, runc state says running
            proc.status = RUNNING
            await self._event(ns, ev.TaskStart(id, proc.rec.pid))
        return proc.info(id)

    async def _start_exec(self, task: Task, proc: Proc) -> ProcessInfo:
        id = task.rec.id
        async with proc.lock:
            if proc.rec.started:
                raise unknown("cannot start a running process" if proc.exit is None else "cannot start a stopped process")
            if task.init.status != RUNNING:
                raise unknown(f"cannot exec in a {task.init.status} state")
            if proc.rec.stdio.terminal and proc.pending_size is not None:
                # the runtime sizes the pty before the process runs: a resize sent after could
                # come too late for a process that asks at once
                await asyncio.to_thread(set_console_size, proc.dir / "process.json", *proc.pending_size)
            cmd = ["exec", "--detach", "--process", str(proc.dir / "process.json"),
                   "--pid-file", str(proc.dir / "pid")]
            if proc.rec.stdio.terminal:
                cmd += ["--console-socket", "@CONSOLE@"]
            logf = proc.dir / "log.json"
            argv = task.oci.argv("--log", str(logf), "--log-format", "json", *cmd, id)
            try:
                started = await supervisor.spawn(self.shim, proc.dir, proc.rec.stdio, argv)
            except supervisor.SupervisorFailed as exc:
                text = await asyncio.to_thread(spawn_error, logf, task.oci, exc)
                raise unknown(f"OCI runtime exec failed: {text}") from None
            proc.rec.pid, proc.rec.shim_pid, proc.rec.started = started.pid, started.shim_pid, True
            if task.rec.shim_cgroup:  # containerd's one shim holds its execs' stdio in that cgroup too
                try:
                    await asyncio.to_thread(cgroups.join, task.rec.shim_cgroup, started.shim_pid)
                except cgroups.JoinFailed as exc:
                    log.warning("exec %s of %s: %s", proc.rec.exec_id, id, exc)
            proc.status = RUNNING
            try:
                await self._give_size(proc)
            except NotFound:
                pass  # the process is gone already: its exit is reported as any other
            await asyncio.to_thread(save_proc, proc)
            await self._event(task.rec.namespace, ev.TaskExecStarted(id, proc.rec.exec_id, proc.rec.pid))
        self._watch(task, proc)
        return proc.info(id)

    async def delete(self, ns: str, id: str, exec_id: str = "") -> Exit:
        task = self._task(ns, id)
        if exec_id:
            return await self._delete_exec(task, exec_id)
        proc = task.init
        async with task.lock:
            if proc.status in (RUNNING, PAUSED):
                state = "running" if proc.status == RUNNING else "paused"
                raise unknown(f"failed to delete task: cannot delete a {state} process")
            # a created task is killed and removed, as containerd's createdState.Delete does:
            # by the release's forced delete, the one its exit would have started
            created = proc.status == CREATED and proc.exit is None
            if not created:
                # report an exit not yet reported (e.g. it happened while we were down), while
                # its cgroup still tells of OOM kills
                async with proc.lock:
                    await self._report_exit(task, proc)
            try:
                await asyncio.shield(self._release(task))
            except RuntimeFailed as exc:
                task.released = None  # the next delete tries again
                raise unknown(f"failed to delete task: {exc.text}") from None
            if created and proc.rec.shim_pid:  # (a restore not yet started has no process)
                await proc.exited.wait()  # set once its watcher has reported the exit
            self.logs.forget(task.bundle)
            await mounts.remove_bundle(task.bundle)
            task.deleted = True
            self.tasks.pop((ns, id), None)
        # a restore never started ran no process: containerd reports it as exited 0
        exit_ = proc.exit or Exit(True, proc.rec.pid, 255 if proc.rec.shim_pid else 0, time.time_ns())
        await self._event(ns, ev.TaskDelete(id, exit_.pid, exit_.exit_status, exit_.exited_at_ns))
        return exit_

    async def _delete_exec(self, task: Task, exec_id: str) -> Exit:
        proc = self._proc(task, exec_id)
        if proc.rec.started and proc.exit is None:
            raise unknown("cannot delete a running process")
        task.execs.pop(exec_id, None)
        await asyncio.to_thread(shutil.rmtree, proc.dir, True)
        return proc.exit or Exit(True, 0, 0, 0)

    # -- queries -----------------------------------------------------------------------

    def get(self, ns: str, id: str, exec_id: str = "") -> ProcessInfo:
        task = self._task(ns, id)
        info = self._proc(task, exec_id).info(id)
        info.bundle, info.runtime = str(task.bundle), task.rec.runtime_name
        return info

    def list(self, ns: str) -> list[ProcessInfo]:
        out = []
        for (tns, id), task in sorted(self.tasks.items()):
            if tns == ns and not task.deleted:
                info = task.init.info(id)
                info.bundle, info.runtime = str(task.bundle), task.rec.runtime_name
                out.append(info)
        return out

    async def wait(self, ns: str, id: str, exec_id: str = "", max_wait: float = 20.0) -> Exit:
        proc = self._proc(self._task(ns, id), exec_id)
        try:
            await asyncio.wait_for(proc.exited.wait(), max_wait)
        except asyncio.TimeoutError:
            return Exit(exited=False)
        assert proc.exit is not None
        return proc.exit

    async def pids(self, ns: str, id: str) -> list[PidInfo]:
        task = self._task(ns, id)
        if task.init.exit is not None:
            return []
        by_pid = {p.rec.pid: e for e, p in task.execs.items() if p.rec.pid and p.exit is None}
        return [PidInfo(pid, by_pid.get(pid, "")) for pid in await task.oci.ps(id)]

    # -- signals and state changes -----------------------------------------------------

    async def kill(self, ns: str, id: str, exec_id: str = "", signal: int = 15, all: bool = False) -> None:
        task = self._task(ns, id)
        proc = self._proc(task, exec_id)
        if exec_id:
            if not proc.rec.started:
                raise FailedPrecondition("process not created: failed precondition")
            if proc.exit is not None:
                raise NotFound("process already finished: not found")
            try:
                os.kill(proc.rec.pid, signal)
            except ProcessLookupError:
                raise NotFound("process already finished: not found") from None
            return
        if proc.exit is not None:
            raise NotFound("process already finished: not found")
        asked = time.time_ns()
        try:
            await task.oci.kill(id, signal, all)
        except Unknown:
            # a process that exits as the kill comes (of the kill, or on its own) has its
            # runtime state half gone by the release (crun: "error opening file .../status"):
            # once its exit is in, it is dead as asked, or was already
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.exited.wait(), KILL_RACE_WAIT)
            if proc.exit is None:
                raise
            if proc.exit.exited_at_ns < asked:
                raise NotFound("process already finished: not found") from None

    async def pause(self, ns: str, id: str) -> None:
        task = self._task(ns, id)
        async with task.lock:
            status = task.init.status
            if status == CREATED:
                raise unknown("cannot pause task in created state")
            if status == PAUSED:
                raise unknown("cannot pause a paused container")
            if status == STOPPED:
                raise unknown("cannot pause a stopped container")
            try:
                await task.oci.pause(id)
            except RuntimeFailed as exc:
                raise unknown(exc.text) from None
            task.init.status = PAUSED
        await self._event(ns, ev.TaskPaused(id))

    async def resume(self, ns: str, id: str) -> None:
        task = self._task(ns, id)
        async with task.lock:
            status = task.init.status
            if status == CREATED:
                raise unknown("cannot resume task in created state")
            if status == RUNNING:
                raise unknown("cannot resume a running process")
            if status == STOPPED:
                raise unknown("cannot resume a stopped container")
            try:
                await task.oci.resume(id)
            except RuntimeFailed as exc:
                raise unknown(exc.text) from None
            task.init.status = RUNNING
        await self._event(ns, ev.TaskResumed(id))

    async def exec(self, ns: str, id: str, exec_id: str, spec_json: bytes, stdio: Stdio | None = None) -> None:
        task = self._task(ns, id)
        if not exec_id:
            raise InvalidArgument("exec id cannot be empty")
        validate_identifier(exec_id)
        if exec_id in task.execs:
            raise AlreadyExists(f"id {exec_id}: already exists")
        if task.init.status != RUNNING:
            raise unknown(f"cannot exec in a {task.init.status} state")
        try:
            process = json.loads(spec_json or b"null")
        except ValueError as exc:
            raise InvalidArgument(f"invalid process spec: {exc}: invalid argument") from None
        if not isinstance(process, dict) or not process.get("args"):
            raise InvalidArgument("invalid process spec: args must not be empty: invalid argument")
        d = task.bundle / "execs" / exec_id
        proc = Proc(d, ProcRecord(exec_id=exec_id, stdio=stdio or Stdio()))
        process["terminal"] = proc.rec.stdio.terminal  # the request's wins, as in containerd's shim
        task.execs[exec_id] = proc

        def write() -> None:
            d.mkdir(parents=True, exist_ok=True)
            (d / "process.json").write_text(json.dumps(process))
            save_proc(proc)
        await asyncio.to_thread(write)
        await self._event(ns, ev.TaskExecAdded(id, exec_id))

    def _ctl(self, proc: Proc, line: str) -> None:
        try:
            fd = os.open(proc.dir / "ctl", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            raise NotFound("process already finished: not found") from None
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    async def resize(self, ns: str, id: str, exec_id: str, width: int, height: int) -> None:
        proc = self._proc(self._task(ns, id), exec_id)
        if proc.exit is not None:
            if exec_id:
                raise unknown("cannot resize a stopped container")
            return  # containerd's init keeps its console until the delete: resizing it succeeds
        if proc.rec.stdio.terminal:
            proc.pending_size = (width, height)
            try:
                await self._give_size(proc)
            except NotFound:
                pass  # the supervisor is just gone, its exit not yet seen: as containerd, accept

    async def _give_size(self, proc: Proc) -> None:
        """Send the supervisor the last size asked, once it runs (a start calls this too)."""
        async with proc.size_lock:
            while proc.pending_size is not None and proc.rec.shim_pid:
                (width, height), proc.pending_size = proc.pending_size, None
                await asyncio.to_thread(self._ctl, proc, f"resize {width} {height}\n")

    async def close_io(self, ns: str, id: str, exec_id: str) -> None:
        """containerd closes its end of stdin in any state, so this never fails for a process
        that exists: one whose supervisor is gone (its stdin's EOF ended it) has nothing to close."""
        proc = self._proc(self._task(ns, id), exec_id)
        if proc.exit is None and proc.rec.shim_pid:
            try:
                await asyncio.to_thread(self._ctl, proc, "closestdin\n")
            except NotFound:
                pass

    async def update(self, ns: str, id: str, resources: bytes) -> None:
        task = self._task(ns, id)
        if task.init.exit is not None:
            raise unknown("cannot update a stopped container")
        try:
            json.loads(resources or b"{}")
        except ValueError as exc:
            raise InvalidArgument(f"invalid resources: {exc}: invalid argument") from None
        try:
            await task.oci.update(id, resources or b"{}")
        except RuntimeFailed as exc:
            raise unknown(exc.text) from None

    async def checkpoint(self, ns: str, id: str, path: str, exit: bool = False,
                         work_path: str = "") -> CheckpointResult:
        """CRIU's images of the task into directory ``path`` (the caller's, or the one
        checkpoints.py writes into the content store)."""
        task = self._task(ns, id)
        if task.init.status == CREATED:
            raise unknown("cannot checkpoint a task in created state")
        if task.init.status == STOPPED:
            raise unknown("cannot checkpoint a stopped container")
        image = Path(path)
        work = Path(work_path) if work_path else task.bundle / "criu-work"
        await asyncio.to_thread(image.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        try:
            await task.oci.checkpoint(id, image, work, leave_running=not exit)
        except RuntimeFailed as exc:
            if "unknown command" in exc.text:  # Debian's crun is built without CRIU
                raise unknown(f"{task.oci.name} cannot checkpoint (built without CRIU): create the task with "
                               "runc to checkpoint it (ctr run --runc-binary runc)") from None
            # CRIU's own reason is in its dump log; containerd names that log too
            text = exc.text if "dump.log" in exc.text else f"{exc.text}; log file: {work / 'dump.log'}"
            raise unknown(text) from None
        await self._event(ns, ev.TaskCheckpointed(id, str(image)))
        return CheckpointResult(str(image))

    async def metrics(self, ns: str, ids: list[str]) -> list[TaskMetrics]:
        wanted = [t for (tns, tid), t in sorted(self.tasks.items())
                  if tns == ns and not t.deleted and (not ids or tid in ids)]
        out = []
        for task in wanted:
            kind, stats = await asyncio.to_thread(cgroups.stats, task.rec.cgroups_path) \
                if task.rec.cgroups_path else ("v1", {})
            out.append(TaskMetrics(task.rec.id, time.time_ns(), kind, stats))
        return out

    # -- recovery ----------------------------------------------------------------------

    async def recover(self) -> int:
        """Re-adopt every task under the state dir; report exits missed while we were down."""
        await asyncio.to_thread(default_binary)  # its one probe runs here, not on a create
        found = await asyncio.to_thread(lambda: sorted(
            path for d in (TASKS_DIR, LEGACY_TASKS_DIR) for path in (self.state / d).glob("*/*/task.json")))
        for path in found:
            bundle = path.parent
            try:
                task = await asyncio.to_thread(Task.load, bundle)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping %s: %s", bundle, exc)
                continue
            if not task.rec.init.shim_pid:
                # we died inside its create: the client got no task, so none may be left running
                await self._undo_create(task.oci, task.rec.id, bundle)
                continue
            for d in await asyncio.to_thread(lambda: sorted((bundle / "execs").glob("*/proc.json"))):
                try:
                    proc = await asyncio.to_thread(load_proc, d.parent)
                except (OSError, ValueError, TypeError):
                    continue
                task.execs[proc.rec.exec_id] = proc
            self.tasks[(task.rec.namespace, task.rec.id)] = task
            self.logs.follow(bundle)
            await self._adopt(task, task.init)
            for proc in task.execs.values():
                if proc.rec.started:
                    await self._adopt(task, proc)
        return len(found)

    async def _adopt(self, task: Task, proc: Proc) -> None:
        if await asyncio.to_thread(supervisor.is_supervisor, proc.rec.shim_pid):
            if proc is task.init:
                state = await task.oci.state(task.rec.id)
                status = (state or {}).get("status", "")
                proc.status = {"created": CREATED, "paused": PAUSED}.get(status, RUNNING)
            else:
                proc.status = RUNNING
            self._watch(task, proc)
        else:
            await self._exited(task, proc)

    async def close(self) -> None:
        self.logs.close()
        for fut in list(self._watchers):
            fut.cancel()
