"""What the runtime service keeps of each task and process, on disk and in memory.

Layout (all under ``<state>/runtime``):
  tasks/<ns>/<id>/                 the task's bundle: config.json, rootfs/, task.json,
                                   and its supervisor's files: pid, exit, ctl, log.json
  tasks/<ns>/<id>/execs/<exec>/    one exec'd process: process.json, proc.json, pid, exit, ctl
  oci/<binary>/<ns>/               the OCI runtime's own --root (unless runc options name a Root)
A process' ``exit`` file is written by its supervisor; ``exit.reported`` marks that
/tasks/exit was published, so a restarted service reports each exit exactly once.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flotilla.libs.api.runtime import CREATED, STOPPED, Exit, Mount, ProcessInfo, Stdio
from flotilla.libs.wire import from_wire

from .oci import OciRuntime


def write_json(path: Path, data: object) -> None:
    """Atomically replace ``path`` (tmp + rename): a crash of the service leaves the old or the
    new record, never half. No fsync: the state is on tmpfs, and no task survives a reboot."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    tmp.rename(path)


def read_exit(path: Path) -> tuple[int, int] | None:
    """The supervisor's record: ``<status> <unix ns>``."""
    try:
        status, ns = path.read_text().split()
        return int(status), int(ns)
    except (OSError, ValueError):
        return None


@dataclass
class ProcRecord:
    """The durable part of a process."""
    exec_id: str = ""
    pid: int = 0
    shim_pid: int = 0
    stdio: Stdio = field(default_factory=Stdio)
    started: bool = False


@dataclass
class Proc:
    dir: Path
    rec: ProcRecord
    status: str = CREATED
    exit: Exit | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # held while starting, so /tasks/exit is never published before /tasks/start
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # the last pty size asked and not yet given to the supervisor: ctr exec -t asks before it
    # starts the process, when no supervisor holds the pty yet
    pending_size: tuple[int, int] | None = None
    size_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # sizes reach the pty in order

    @property
    def exit_file(self) -> Path:
        return self.dir / "exit"

    @property
    def reported_file(self) -> Path:
        return self.dir / "exit.reported"

    def set_exit(self, pid: int, status: int, at_ns: int) -> None:
        """Record the exit; waiters are woken by the engine once /tasks/exit is out."""
        self.exit = Exit(True, pid, status, at_ns)
        self.status = STOPPED

    def info(self, container_id: str) -> ProcessInfo:
        e = self.exit or Exit(False)
        return ProcessInfo(id=container_id, exec_id=self.rec.exec_id, pid=self.rec.pid, status=self.status,
                           stdio=self.rec.stdio, exit_status=e.exit_status, exited_at_ns=e.exited_at_ns)


@dataclass
class TaskRecord:
    """The durable part of a task (task.json)."""
    namespace: str
    id: str
    runtime_name: str
    binary: str
    root: str
    cgroups_path: str = ""
    rootfs: list[Mount] = field(default_factory=list)
    checkpoint: str = ""
    init: ProcRecord = field(default_factory=ProcRecord)
    systemd_cgroup: bool = False          # runc options': every runtime command takes --systemd-cgroup
    shim_cgroup: str = ""                 # runc options': the cgroup each supervisor joins


@dataclass
class Task:
    bundle: Path
    rec: TaskRecord
    init: Proc
    execs: dict[str, Proc] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    deleted: bool = False
    released: "asyncio.Future[None] | None" = None  # the runtime's container and rootfs mount (engine._release)

    @property
    def oci(self) -> OciRuntime:
        return OciRuntime(self.rec.binary, Path(self.rec.root), self.rec.systemd_cgroup)

    def save(self) -> None:
        self.rec.init = self.init.rec
        write_json(self.bundle / "task.json", asdict(self.rec))

    @staticmethod
    def load(bundle: Path) -> "Task":
        rec = from_wire(TaskRecord, json.loads((bundle / "task.json").read_text()))
        return Task(bundle, rec, Proc(bundle, rec.init))


def save_proc(proc: Proc) -> None:
    write_json(proc.dir / "proc.json", asdict(proc.rec))


def load_proc(d: Path) -> Proc:
    return Proc(d, from_wire(ProcRecord, json.loads((d / "proc.json").read_text())))


def set_console_size(process_json: Path, width: int, height: int) -> None:
    """Record a resize asked before the process started, in its process spec."""
    process = json.loads(process_json.read_bytes())
    process["consoleSize"] = {"width": width, "height": height}
    process_json.write_text(json.dumps(process))
