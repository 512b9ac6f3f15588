"""The snapshots/diff service's contract: subjects, records, and its client over the bus.

The service is host-local: its subjects are ``<prefix>.snapshots.<host>.<method>``, since
snapshots are directories on one host. ``Mount`` is the currency between this service and
the runtime: the same shape as containerd's ``Mount{type, source, target, options}``.

Deep overlay chains: a Mount carries absolute ``lowerdir`` paths exactly as containerd's
does. Whoever mounts it must keep the kernel's one-page limit on mount data in mind;
``flotilla.libs.mount.mount_all`` does that as containerd does (relative lowerdirs
from the longest common directory, the mount made with that directory as working dir).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..bus import Bus
from ..subjects import local
from ..wire import from_wire
from .types import Mount  # noqa: F401  (part of this contract)

SERVICE = "snapshots"

# methods; each request is the msgpack map of the record named beside it
PREPARE = "prepare"        # PrepareRequest -> list[Mount]
VIEW = "view"              # PrepareRequest -> list[Mount]
MOUNTS = "mounts"          # KeyRequest -> list[Mount]
COMMIT = "commit"          # CommitRequest -> None
REMOVE = "remove"          # KeyRequest -> None
STAT = "stat"              # KeyRequest -> Info
UPDATE = "update"          # UpdateRequest -> Info
LIST = "list"              # ListRequest -> list[Info]
USAGE = "usage"            # KeyRequest -> Usage
CLEANUP = "cleanup"        # SnapshotterRequest -> None
NAMESPACE_HELD = "namespace_held"  # NamespaceRequest -> list[str] (snapshotter names)
APPLY = "diff.apply"       # ApplyRequest -> Descriptor (the applied, uncompressed layer)
DIFF = "diff.diff"         # DiffRequest -> Descriptor (the written layer)

SNAPSHOTTERS = ("overlayfs", "native")
DEFAULT_SNAPSHOTTER = "overlayfs"

# kinds, by containerd's names
KIND_VIEW, KIND_ACTIVE, KIND_COMMITTED = "view", "active", "committed"

LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
LABEL_GC_ROOT = "containerd.io/gc.root"


def subject(prefix: str, host: str, method: str) -> str:
    return local(prefix, SERVICE, host, method)


@dataclass
class Info:
    kind: str                       # "view" | "active" | "committed"
    name: str                       # the key (active/view) or name (committed)
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0             # ns since the epoch
    updated_at: int = 0
    leases: list[str] = field(default_factory=list)  # lease ids it was created under


@dataclass
class Usage:
    size: int = 0                   # bytes
    inodes: int = 0


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class PrepareRequest:
    namespace: str
    snapshotter: str
    key: str
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    lease: str = ""                 # the containerd-lease of the call, if any


@dataclass
class CommitRequest:
    namespace: str
    snapshotter: str
    name: str
    key: str
    labels: dict[str, str] = field(default_factory=dict)
    lease: str = ""
    # overlayfs: stack an active snapshot prepared without a parent onto this committed one
    # (a parallel unpack applies layers apart, then commits them in order onto each other)
    parent: str = ""


@dataclass
class KeyRequest:
    namespace: str
    snapshotter: str
    key: str


@dataclass
class UpdateRequest:
    namespace: str
    snapshotter: str
    info: Info
    paths: list[str] = field(default_factory=list)  # field mask; empty replaces the labels


@dataclass
class ListRequest:
    namespace: str
    snapshotter: str
    filters: list[str] = field(default_factory=list)


@dataclass
class SnapshotterRequest:
    snapshotter: str


@dataclass
class NamespaceRequest:
    namespace: str


@dataclass
class ApplyRequest:
    namespace: str
    diff: Descriptor
    mounts: list[Mount] = field(default_factory=list)
    # the mount is an overlay upper whose parent layers come later (see CommitRequest.parent);
    # a layer that needs their files is refused with FailedPrecondition
    detached: bool = False


@dataclass
class DiffRequest:
    namespace: str
    left: list[Mount] = field(default_factory=list)
    right: list[Mount] = field(default_factory=list)
    media_type: str = ""            # default: tar+gzip, as containerd's walking differ
    ref: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    lease: str = ""                 # the written blob is held by this lease


class SnapshotsClient:
    """Calls the snapshots/diff service of one host. Reads are idempotent and retried."""

    def __init__(self, bus: Bus, prefix: str, host: str) -> None:
        self.bus, self.prefix, self.host = bus, prefix, host

    async def _call(self, method: str, payload: object, timeout: float, idempotent: bool) -> object:
        return await self.bus.request(subject(self.prefix, self.host, method), payload,
                                      timeout=timeout, idempotent=idempotent)

    async def prepare(self, namespace: str, snapshotter: str, key: str, parent: str = "",
                      labels: dict[str, str] | None = None, lease: str = "",
                      timeout: float = 30.0) -> list[Mount]:
        data = await self._call(PREPARE, PrepareRequest(namespace, snapshotter, key, parent, labels or {}, lease),
                                timeout, False)
        return [from_wire(Mount, m) for m in data]  # type: ignore[union-attr]

    async def view(self, namespace: str, snapshotter: str, key: str, parent: str = "",
                   labels: dict[str, str] | None = None, lease: str = "",
                   timeout: float = 30.0) -> list[Mount]:
        data = await self._call(VIEW, PrepareRequest(namespace, snapshotter, key, parent, labels or {}, lease),
                                timeout, False)
        return [from_wire(Mount, m) for m in data]  # type: ignore[union-attr]

    async def mounts(self, namespace: str, snapshotter: str, key: str, timeout: float = 10.0) -> list[Mount]:
        data = await self._call(MOUNTS, KeyRequest(namespace, snapshotter, key), timeout, True)
        return [from_wire(Mount, m) for m in data]  # type: ignore[union-attr]

    async def commit(self, namespace: str, snapshotter: str, name: str, key: str,
                     labels: dict[str, str] | None = None, lease: str = "",
                     timeout: float = 60.0, parent: str = "") -> None:
        await self._call(COMMIT, CommitRequest(namespace, snapshotter, name, key, labels or {}, lease, parent),
                         timeout, False)

    async def remove(self, namespace: str, snapshotter: str, key: str, timeout: float = 60.0) -> None:
        await self._call(REMOVE, KeyRequest(namespace, snapshotter, key), timeout, False)

    async def stat(self, namespace: str, snapshotter: str, key: str, timeout: float = 10.0) -> Info:
        data = await self._call(STAT, KeyRequest(namespace, snapshotter, key), timeout, True)
        return from_wire(Info, data)  # type: ignore[arg-type]

    async def update(self, namespace: str, snapshotter: str, info: Info, paths: list[str] | None = None,
                     timeout: float = 10.0) -> Info:
        data = await self._call(UPDATE, UpdateRequest(namespace, snapshotter, info, paths or []), timeout, True)
        return from_wire(Info, data)  # type: ignore[arg-type]

    async def list(self, namespace: str, snapshotter: str, filters: list[str] | None = None,
                   timeout: float = 30.0) -> list[Info]:
        data = await self._call(LIST, ListRequest(namespace, snapshotter, filters or []), timeout, True)
        return [from_wire(Info, d) for d in data]  # type: ignore[union-attr]

    async def usage(self, namespace: str, snapshotter: str, key: str, timeout: float = 60.0) -> Usage:
        data = await self._call(USAGE, KeyRequest(namespace, snapshotter, key), timeout, True)
        return from_wire(Usage, data)  # type: ignore[arg-type]

    async def cleanup(self, snapshotter: str, timeout: float = 120.0) -> None:
        await self._call(CLEANUP, SnapshotterRequest(snapshotter), timeout, True)

    async def namespace_held(self, namespace: str, timeout: float = 10.0) -> list[str]:
        """Names of the snapshotters that still hold snapshots in ``namespace``."""
        data = await self._call(NAMESPACE_HELD, NamespaceRequest(namespace), timeout, True)
        return list(data or [])  # type: ignore[call-overload]

    async def apply(self, namespace: str, diff: Descriptor, mounts: list[Mount],
                    timeout: float = 600.0, detached: bool = False) -> Descriptor:
        data = await self._call(APPLY, ApplyRequest(namespace, diff, mounts, detached), timeout, False)
        return from_wire(Descriptor, data)  # type: ignore[arg-type]

    async def diff(self, namespace: str, left: list[Mount], right: list[Mount], media_type: str = "",
                   ref: str = "", labels: dict[str, str] | None = None, timeout: float = 600.0,
                   lease: str = "") -> Descriptor:
        data = await self._call(DIFF, DiffRequest(namespace, left, right, media_type, ref, labels or {}, lease),
                                timeout, False)
        return from_wire(Descriptor, data)  # type: ignore[arg-type]
