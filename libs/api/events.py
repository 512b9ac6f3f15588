"""The events services publish, as typed records: each names containerd's topic and payload
type, and its fields are the payload's (the gateway fills containerd's protobuf message from
them, libs/events.py and services/gateway/events.py). Watchers name topics by these
constants, never by string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from .metadata import AnyValue
from .runtime import Stdio
from .types import Mount


@dataclass(frozen=True)
class EventRecord:
    TOPIC: ClassVar[str]
    TYPE_URL: ClassVar[str]


E = TypeVar("E", bound=type[EventRecord])


def _event(topic: str, type_name: str) -> Callable[[E], E]:
    """Stamp a record with containerd's topic and payload type."""
    def stamp(cls: E) -> E:
        cls.TOPIC = topic
        cls.TYPE_URL = type_name if "." in type_name else f"containerd.events.{type_name}"
        return cls
    return stamp


# -- namespaces (farm-wide) ----------------------------------------------------------------

@_event("/namespaces/create", "NamespaceCreate")
@dataclass(frozen=True)
class NamespaceCreate(EventRecord):
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@_event("/namespaces/update", "NamespaceUpdate")
@dataclass(frozen=True)
class NamespaceUpdate(EventRecord):
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@_event("/namespaces/delete", "NamespaceDelete")
@dataclass(frozen=True)
class NamespaceDelete(EventRecord):
    name: str


# -- containers (host-local) ---------------------------------------------------------------

@dataclass(frozen=True)
class ContainerRuntime:
    name: str
    options: AnyValue | None = None


@_event("/containers/create", "ContainerCreate")
@dataclass(frozen=True)
class ContainerCreate(EventRecord):
    id: str
    image: str
    runtime: ContainerRuntime


@_event("/containers/update", "ContainerUpdate")
@dataclass(frozen=True)
class ContainerUpdate(EventRecord):
    id: str
    image: str
    labels: dict[str, str]
    snapshot_key: str


@_event("/containers/delete", "ContainerDelete")
@dataclass(frozen=True)
class ContainerDelete(EventRecord):
    id: str


# -- images (farm-wide; containerd names their payloads in the images service) -------------

@_event("/images/create", "containerd.services.images.v1.ImageCreate")
@dataclass(frozen=True)
class ImageCreate(EventRecord):
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@_event("/images/update", "containerd.services.images.v1.ImageUpdate")
@dataclass(frozen=True)
class ImageUpdate(EventRecord):
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@_event("/images/delete", "containerd.services.images.v1.ImageDelete")
@dataclass(frozen=True)
class ImageDelete(EventRecord):
    name: str


# -- content (farm-wide) -------------------------------------------------------------------

@_event("/content/delete", "ContentDelete")
@dataclass(frozen=True)
class ContentDelete(EventRecord):
    digest: str


# -- snapshots (host-local) ----------------------------------------------------------------

@_event("/snapshot/prepare", "SnapshotPrepare")
@dataclass(frozen=True)
class SnapshotPrepare(EventRecord):
    key: str
    parent: str


@_event("/snapshot/commit", "SnapshotCommit")
@dataclass(frozen=True)
class SnapshotCommit(EventRecord):
    key: str
    name: str


@_event("/snapshot/remove", "SnapshotRemove")
@dataclass(frozen=True)
class SnapshotRemove(EventRecord):
    key: str


# -- tasks (host-local) --------------------------------------------------------------------

@_event("/tasks/create", "TaskCreate")
@dataclass(frozen=True)
class TaskCreate(EventRecord):
    container_id: str
    bundle: str
    rootfs: list[Mount]
    io: Stdio
    checkpoint: str
    pid: int


@_event("/tasks/start", "TaskStart")
@dataclass(frozen=True)
class TaskStart(EventRecord):
    container_id: str
    pid: int


@_event("/tasks/exit", "TaskExit")
@dataclass(frozen=True)
class TaskExit(EventRecord):
    container_id: str
    id: str               # the process: the container's id for its init, else the exec id
    pid: int
    exit_status: int
    exited_at: int        # unix nanoseconds


@_event("/tasks/delete", "TaskDelete")
@dataclass(frozen=True)
class TaskDelete(EventRecord):
    container_id: str
    pid: int
    exit_status: int
    exited_at: int


@_event("/tasks/oom", "TaskOOM")
@dataclass(frozen=True)
class TaskOOM(EventRecord):
    container_id: str


@_event("/tasks/exec-added", "TaskExecAdded")
@dataclass(frozen=True)
class TaskExecAdded(EventRecord):
    container_id: str
    exec_id: str


@_event("/tasks/exec-started", "TaskExecStarted")
@dataclass(frozen=True)
class TaskExecStarted(EventRecord):
    container_id: str
    exec_id: str
    pid: int


@_event("/tasks/paused", "TaskPaused")
@dataclass(frozen=True)
class TaskPaused(EventRecord):
    container_id: str


@_event("/tasks/resumed", "TaskResumed")
@dataclass(frozen=True)
class TaskResumed(EventRecord):
    container_id: str


@_event("/tasks/checkpointed", "TaskCheckpointed")
@dataclass(frozen=True)
class TaskCheckpointed(EventRecord):
    container_id: str
    checkpoint: str
