"""The runtime service's contract: host-local subjects, records, and its client over the bus.

Subjects are ``<prefix>.runtime.<host>.<method>``: a task lives on one host, and only that
host's runtime service can act on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import DeadlineExceeded, NotFound, Unavailable
from .. import subjects
from ..routes import Route, method_name
from .types import Descriptor, Mount  # noqa: F401  (part of this contract)

if TYPE_CHECKING:  # the bus (nats) is not imported for a contract's records and subjects
    from ..bus import Bus

SERVICE = "runtime"
R = TypeVar("R")

# containerd's runtime names: the runc v2 shim (the default) and the deprecated v1 linux runtime's prefix
RUNC_V2 = "io.containerd.runc.v2"
RUNTIME_V1 = "io.containerd.runtime.v1."

# task and process states, as containerd names them
CREATED, RUNNING, STOPPED, PAUSED, PAUSING, UNKNOWN = "created", "running", "stopped", "paused", "pausing", "unknown"

# a checkpoint in the content store, as containerd 1.6 writes it: CRIU's image directory as a
# tar, and the container's spec (a protobuf Any) beside it
CHECKPOINT_TAR = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
CHECKPOINT_CONFIG = "application/vnd.containerd.container.checkpoint.config.v1+proto"


def task_not_found(id: str) -> NotFound:
    """The runtime has no task ``id``. Its other NotFound answers (a finished process, an
    unknown exec id) mean the task, and so its container, exists."""
    return NotFound(f"task {id} not found")


def is_task_not_found(exc: NotFound, id: str) -> bool:
    return exc.message == task_not_found(id).message


def stem(prefix: str, host: str) -> str:
    """Where one host's runtime serves its routes: ``<prefix>.runtime.<host>``."""
    return subjects.stem(prefix, SERVICE, host)


def subject(prefix: str, host: str, method: Route[Any, Any] | str) -> str:
    return f"{stem(prefix, host)}.{method_name(method)}"


@dataclass
class Stdio:
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass
class CreateTask:
    namespace: str
    id: str
    spec: bytes                            # the OCI runtime spec, JSON
    runtime: str = "io.containerd.runc.v2"  # the container's runtime name
    binary: str = ""                       # runc options' BinaryName, or the request's runtime path
    rootfs: list[Mount] = field(default_factory=list)
    stdio: Stdio = field(default_factory=Stdio)
    checkpoint: str = ""                   # a directory of CRIU images to restore from
    checkpoint_blob: Descriptor | None = None  # or a CHECKPOINT_TAR blob of the content store
    # the rest of the runc options (containerd.runc.v1.Options, or v1's RuncOptions and CreateOptions)
    root: str = ""                         # Root / RuntimeRoot: the runtime's --root, per namespace below it
    systemd_cgroup: bool = False           # SystemdCgroup: the runtime's --systemd-cgroup
    shim_cgroup: str = ""                  # ShimCgroup: an existing cgroup the task's supervisors join


@dataclass
class ProcessRef:
    namespace: str
    id: str
    exec_id: str = ""                      # "" = the task's init process


@dataclass
class TaskList:
    namespace: str


@dataclass
class ProcessInfo:
    id: str                                # container id
    exec_id: str = ""
    pid: int = 0
    status: str = UNKNOWN
    stdio: Stdio = field(default_factory=Stdio)
    exit_status: int = 0
    exited_at_ns: int = 0
    bundle: str = ""
    runtime: str = ""


@dataclass
class Exit:
    exited: bool = True
    pid: int = 0
    exit_status: int = 0
    exited_at_ns: int = 0


@dataclass
class Kill:
    namespace: str
    id: str
    exec_id: str = ""
    signal: int = 15
    all: bool = False


@dataclass
class Exec:
    namespace: str
    id: str
    exec_id: str
    spec: bytes                            # the OCI process spec, JSON
    stdio: Stdio = field(default_factory=Stdio)


@dataclass
class Resize:
    namespace: str
    id: str
    exec_id: str = ""
    width: int = 0
    height: int = 0


@dataclass
class CloseIO:
    namespace: str
    id: str
    exec_id: str = ""
    stdin: bool = True


@dataclass
class PidInfo:
    pid: int
    exec_id: str = ""


@dataclass
class Checkpoint:
    namespace: str
    id: str
    path: str = ""                         # image directory; "" = into the content store
    exit: bool = False                     # stop the task after checkpointing
    work_path: str = ""                    # CRIU's work dir (logs); "" = one in the bundle
    # into the content store only: the lease holding the blobs, and the container's spec as
    # containerd stores it (a protobuf Any), written as the CHECKPOINT_CONFIG blob
    lease: str = ""
    config: bytes = b""


@dataclass
class CheckpointResult:
    path: str = ""                         # the image directory (with a path asked)
    descriptors: list[Descriptor] = field(default_factory=list)  # the blobs (into the content store)


@dataclass
class Update:
    namespace: str
    id: str
    resources: bytes = b""                 # OCI LinuxResources, JSON
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class MetricsQuery:
    namespace: str
    ids: list[str] = field(default_factory=list)  # empty: every task of the namespace


@dataclass
class TaskMetrics:
    id: str
    timestamp_ns: int
    cgroup: str = "v1"                     # which cgroup hierarchy the figures come from
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class WaitFor:
    namespace: str
    id: str
    exec_id: str = ""
    max_wait: float = 20.0                 # answer ``exited=False`` after this long; call again


# the contract's routes: method, request record -> reply record. Idempotent ones are sent again
# as they are; the others carry a request id, so a task is created, started or killed once.
# Timeouts are the client's defaults: create, start and delete may wait on a shim and runc.
CREATE: Route[CreateTask, ProcessInfo] = Route("tasks.create", CreateTask, ProcessInfo, timeout=60.0)
START: Route[ProcessRef, ProcessInfo] = Route("tasks.start", ProcessRef, ProcessInfo, timeout=60.0)
DELETE: Route[ProcessRef, Exit] = Route("tasks.delete", ProcessRef, Exit, timeout=60.0)
GET: Route[ProcessRef, ProcessInfo] = Route("tasks.get", ProcessRef, ProcessInfo, idempotent=True)
LIST: Route[TaskList, list[ProcessInfo]] = Route("tasks.list", TaskList, list[ProcessInfo], idempotent=True)
KILL: Route[Kill, None] = Route("tasks.kill", Kill, None)
EXEC: Route[Exec, None] = Route("tasks.exec", Exec, None)
RESIZE: Route[Resize, None] = Route("tasks.resize", Resize, None, idempotent=True)
CLOSE_IO: Route[CloseIO, None] = Route("tasks.closeio", CloseIO, None, idempotent=True)
PAUSE: Route[ProcessRef, None] = Route("tasks.pause", ProcessRef, None, timeout=30.0)
RESUME: Route[ProcessRef, None] = Route("tasks.resume", ProcessRef, None, timeout=30.0)
PIDS: Route[ProcessRef, list[PidInfo]] = Route("tasks.pids", ProcessRef, list[PidInfo], idempotent=True)
CHECKPOINT: Route[Checkpoint, CheckpointResult] = Route("tasks.checkpoint", Checkpoint, CheckpointResult,
                                                       timeout=120.0)
UPDATE: Route[Update, None] = Route("tasks.update", Update, None, timeout=30.0)
METRICS: Route[MetricsQuery, list[TaskMetrics]] = Route("tasks.metrics", MetricsQuery, list[TaskMetrics],
                                                        idempotent=True)
# answers ``exited=False`` after the request's max_wait (20s by default): a little longer here
WAIT: Route[WaitFor, Exit] = Route("tasks.wait", WaitFor, Exit, timeout=25.0)

ROUTES: tuple[Route[Any, Any], ...] = (CREATE, START, DELETE, GET, LIST, KILL, EXEC, RESIZE, CLOSE_IO, PAUSE,
                                       RESUME, PIDS, CHECKPOINT, UPDATE, METRICS, WAIT)


class RuntimeClient:
    """Calls one host's runtime service. Reads are retried while it restarts; Wait long-polls."""

    def __init__(self, bus: Bus, prefix: str, host: str) -> None:
        self.bus, self.prefix, self.host = bus, prefix, host

    async def _call(self, route: Route[Any, R], request: object, timeout: float) -> R:
        return await self.bus.call(subject(self.prefix, self.host, route), route, request, timeout=timeout)

    async def create(self, req: CreateTask, timeout: float = CREATE.timeout) -> ProcessInfo:
        return await self._call(CREATE, req, timeout)

    async def start(self, ref: ProcessRef, timeout: float = START.timeout) -> ProcessInfo:
        return await self._call(START, ref, timeout)

    async def delete(self, ref: ProcessRef, timeout: float = DELETE.timeout) -> Exit:
        return await self._call(DELETE, ref, timeout)

    async def get(self, ref: ProcessRef, timeout: float = GET.timeout) -> ProcessInfo:
        return await self._call(GET, ref, timeout)

    async def list(self, namespace: str, timeout: float = LIST.timeout) -> list[ProcessInfo]:
        return await self._call(LIST, TaskList(namespace), timeout)

    async def kill(self, req: Kill, timeout: float = KILL.timeout) -> None:
        await self._call(KILL, req, timeout)

    async def exec(self, req: Exec, timeout: float = EXEC.timeout) -> None:
        await self._call(EXEC, req, timeout)

    async def resize(self, req: Resize, timeout: float = RESIZE.timeout) -> None:
        await self._call(RESIZE, req, timeout)

    async def close_io(self, req: CloseIO, timeout: float = CLOSE_IO.timeout) -> None:
        await self._call(CLOSE_IO, req, timeout)

    async def pause(self, ref: ProcessRef, timeout: float = PAUSE.timeout) -> None:
        await self._call(PAUSE, ref, timeout)

    async def resume(self, ref: ProcessRef, timeout: float = RESUME.timeout) -> None:
        await self._call(RESUME, ref, timeout)

    async def pids(self, ref: ProcessRef, timeout: float = PIDS.timeout) -> list[PidInfo]:
        return await self._call(PIDS, ref, timeout)

    async def checkpoint(self, req: Checkpoint, timeout: float = CHECKPOINT.timeout) -> CheckpointResult:
        return await self._call(CHECKPOINT, req, timeout)

    async def update(self, req: Update, timeout: float = UPDATE.timeout) -> None:
        await self._call(UPDATE, req, timeout)

    async def metrics(self, query: MetricsQuery, timeout: float = METRICS.timeout) -> list[TaskMetrics]:
        return await self._call(METRICS, query, timeout)

    async def wait(self, ref: ProcessRef, poll: float = 20.0) -> Exit:
        """Block until the process exits, across restarts of the runtime service."""
        while True:
            try:
                exit_ = await self._call(WAIT, WaitFor(ref.namespace, ref.id, ref.exec_id, poll), poll + 5.0)
            except (DeadlineExceeded, Unavailable):
                await asyncio.sleep(0.2)  # the service is restarting: ask again
                continue
            if exit_.exited:
                return exit_
