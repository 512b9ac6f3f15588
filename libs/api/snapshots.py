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
from typing import TYPE_CHECKING, Any, TypeVar

from .. import subjects
from ..routes import Route, method_name
from .types import Descriptor, Mount  # noqa: F401  (part of this contract)

if TYPE_CHECKING:  # the bus (nats) is not imported for a contract's records and subjects
    from ..bus import Bus

SERVICE = "snapshots"

SNAPSHOTTERS = ("overlayfs", "native")
DEFAULT_SNAPSHOTTER = "overlayfs"

# kinds, by containerd's names
KIND_VIEW, KIND_ACTIVE, KIND_COMMITTED = "view", "active", "committed"

LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
LABEL_GC_ROOT = "containerd.io/gc.root"

R = TypeVar("R")


def stem(prefix: str, host: str) -> str:
    """Where this host's service is served: ``<prefix>.snapshots.<host>``."""
    return subjects.stem(prefix, SERVICE, host)


def subject(prefix: str, host: str, method: Route[Any, Any] | str) -> str:
    return f"{stem(prefix, host)}.{method_name(method)}"


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
class AheadRequest:
    """A layer blob just committed: apply it now, its Diff.Apply comes later
    (services/snapshots/ahead.py)."""
    namespace: str
    digest: str


@dataclass
class DiffRequest:
    namespace: str
    left: list[Mount] = field(default_factory=list)
    right: list[Mount] = field(default_factory=list)
    media_type: str = ""            # default: tar+gzip, as containerd's walking differ
    ref: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    lease: str = ""                 # the written blob is held by this lease


# -- methods on <prefix>.snapshots.<host>.<method>: request record -> reply record. Reads
# and cleanup are idempotent (sent again as they are); the others carry a request id
PREPARE: Route[PrepareRequest, list[Mount]] = Route("prepare", PrepareRequest, list[Mount], timeout=30.0)
VIEW: Route[PrepareRequest, list[Mount]] = Route("view", PrepareRequest, list[Mount], timeout=30.0)
MOUNTS: Route[KeyRequest, list[Mount]] = Route("mounts", KeyRequest, list[Mount], idempotent=True)
COMMIT: Route[CommitRequest, None] = Route("commit", CommitRequest, None, timeout=60.0)
REMOVE: Route[KeyRequest, None] = Route("remove", KeyRequest, None, timeout=60.0)
STAT: Route[KeyRequest, Info] = Route("stat", KeyRequest, Info, idempotent=True)
UPDATE: Route[UpdateRequest, Info] = Route("update", UpdateRequest, Info, idempotent=True)
LIST: Route[ListRequest, list[Info]] = Route("list", ListRequest, list[Info], idempotent=True, timeout=30.0)
USAGE: Route[KeyRequest, Usage] = Route("usage", KeyRequest, Usage, idempotent=True, timeout=60.0)
CLEANUP: Route[SnapshotterRequest, None] = Route("cleanup", SnapshotterRequest, None, idempotent=True,
                                                 timeout=120.0)
# -> the names of the snapshotters that hold snapshots in the namespace (plain data)
NAMESPACE_HELD: Route[NamespaceRequest, list[str]] = Route("namespace_held", NamespaceRequest, None,
                                                           idempotent=True)
# -> the applied layer, uncompressed
APPLY: Route[ApplyRequest, Descriptor] = Route("diff.apply", ApplyRequest, Descriptor, timeout=600.0)
# -> the written layer
DIFF: Route[DiffRequest, Descriptor] = Route("diff.diff", DiffRequest, Descriptor, timeout=600.0)
APPLY_AHEAD: Route[AheadRequest, None] = Route("diff.ahead", AheadRequest, None, idempotent=True, timeout=10.0)


class SnapshotsClient:
    """Calls the snapshots/diff service of one host. Reads are idempotent and retried."""

    def __init__(self, bus: Bus, prefix: str, host: str) -> None:
        self.bus, self.prefix, self.host = bus, prefix, host

    async def _call(self, route: Route[Any, R], request: object, timeout: float) -> R:
        return await self.bus.call(subject(self.prefix, self.host, route), route, request, timeout=timeout)

    async def prepare(self, namespace: str, snapshotter: str, key: str, parent: str = "",
                      labels: dict[str, str] | None = None, lease: str = "",
                      timeout: float = PREPARE.timeout) -> list[Mount]:
        return await self._call(PREPARE, PrepareRequest(namespace, snapshotter, key, parent, labels or {}, lease),
                                timeout)

    async def view(self, namespace: str, snapshotter: str, key: str, parent: str = "",
                   labels: dict[str, str] | None = None, lease: str = "",
                   timeout: float = VIEW.timeout) -> list[Mount]:
        return await self._call(VIEW, PrepareRequest(namespace, snapshotter, key, parent, labels or {}, lease),
                                timeout)

    async def mounts(self, namespace: str, snapshotter: str, key: str, timeout: float = MOUNTS.timeout) -> list[Mount]:
        return await self._call(MOUNTS, KeyRequest(namespace, snapshotter, key), timeout)

    async def commit(self, namespace: str, snapshotter: str, name: str, key: str,
                     labels: dict[str, str] | None = None, lease: str = "",
                     timeout: float = COMMIT.timeout, parent: str = "") -> None:
        await self._call(COMMIT, CommitRequest(namespace, snapshotter, name, key, labels or {}, lease, parent),
                         timeout)

    async def remove(self, namespace: str, snapshotter: str, key: str, timeout: float = REMOVE.timeout) -> None:
        await self._call(REMOVE, KeyRequest(namespace, snapshotter, key), timeout)

    async def stat(self, namespace: str, snapshotter: str, key: str, timeout: float = STAT.timeout) -> Info:
        return await self._call(STAT, KeyRequest(namespace, snapshotter, key), timeout)

    async def update(self, namespace: str, snapshotter: str, info: Info, paths: list[str] | None = None,
                     timeout: float = UPDATE.timeout) -> Info:
        return await self._call(UPDATE, UpdateRequest(namespace, snapshotter, info, paths or []), timeout)

    async def list(self, namespace: str, snapshotter: str, filters: list[str] | None = None,
                   timeout: float = LIST.timeout) -> list[Info]:
        return await self._call(LIST, ListRequest(namespace, snapshotter, filters or []), timeout)

    async def usage(self, namespace: str, snapshotter: str, key: str, timeout: float = USAGE.timeout) -> Usage:
        return await self._call(USAGE, KeyRequest(namespace, snapshotter, key), timeout)

    async def cleanup(self, snapshotter: str, timeout: float = CLEANUP.timeout) -> None:
        await self._call(CLEANUP, SnapshotterRequest(snapshotter), timeout)

    async def namespace_held(self, namespace: str, timeout: float = NAMESPACE_HELD.timeout) -> list[str]:
        """Names of the snapshotters that still hold snapshots in ``namespace``."""
        return list(await self._call(NAMESPACE_HELD, NamespaceRequest(namespace), timeout) or [])

    async def apply(self, namespace: str, diff: Descriptor, mounts: list[Mount],
                    timeout: float = APPLY.timeout, detached: bool = False) -> Descriptor:
        return await self._call(APPLY, ApplyRequest(namespace, diff, mounts, detached), timeout)

    async def apply_ahead(self, namespace: str, digest: str, timeout: float = APPLY_AHEAD.timeout) -> None:
        """Have the layer blob ``digest`` applied now, ahead of its Diff.Apply; returns at once."""
        await self._call(APPLY_AHEAD, AheadRequest(namespace, digest), timeout)

    async def diff(self, namespace: str, left: list[Mount], right: list[Mount], media_type: str = "",
                   ref: str = "", labels: dict[str, str] | None = None, timeout: float = DIFF.timeout,
                   lease: str = "") -> Descriptor:
        return await self._call(DIFF, DiffRequest(namespace, left, right, media_type, ref, labels or {}, lease),
                                timeout)
