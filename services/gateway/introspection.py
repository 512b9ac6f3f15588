"""containerd.services.introspection.v1.Introspection: what is actually up, and a stable uuid."""

from __future__ import annotations

import asyncio
import platform
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import empty_pb2
from google.rpc import status_pb2
from grpc import aio

from flotilla._api.containerd.api.types import platform_pb2
from flotilla.libs import filters
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import FlotillaError
from flotilla.libs.subjects import local, shared

from . import pb
from .rpc import unary

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
PLATFORM = platform_pb2.Platform(os="linux", architecture=_ARCH.get(platform.machine(), platform.machine()))


@dataclass(frozen=True)
class PluginEntry:
    type: str
    id: str
    backend: str            # the service that provides it ("" = the gateway itself)
    host_local: bool = False
    implemented: bool = True
    with_platform: bool = False


# containerd's plugin types and ids, each with the Flotilla service behind it
PLUGINS: tuple[PluginEntry, ...] = (
    PluginEntry("io.containerd.content.v1", "content", "content"),
    PluginEntry("io.containerd.snapshotter.v1", "native", "snapshots", True, with_platform=True),
    PluginEntry("io.containerd.snapshotter.v1", "overlayfs", "snapshots", True, with_platform=True),
    PluginEntry("io.containerd.metadata.v1", "sql", "metadata"),
    PluginEntry("io.containerd.differ.v1", "walking", "snapshots", True, with_platform=True),
    PluginEntry("io.containerd.gc.v1", "scheduler", "metadata"),
    PluginEntry("io.containerd.runtime.v2", "task", "runtime", True, with_platform=True),
    PluginEntry("io.containerd.grpc.v1", "containers", "metadata"),
    PluginEntry("io.containerd.grpc.v1", "content", "content"),
    PluginEntry("io.containerd.grpc.v1", "diff", "snapshots", True),
    PluginEntry("io.containerd.grpc.v1", "events", ""),
    PluginEntry("io.containerd.grpc.v1", "images", "metadata"),
    PluginEntry("io.containerd.grpc.v1", "introspection", ""),
    PluginEntry("io.containerd.grpc.v1", "leases", "metadata"),
    PluginEntry("io.containerd.grpc.v1", "namespaces", "metadata"),
    PluginEntry("io.containerd.grpc.v1", "snapshots", "snapshots", True),
    PluginEntry("io.containerd.grpc.v1", "tasks", "runtime", True),
    PluginEntry("io.containerd.grpc.v1", "version", ""),
)
_PING_TIMEOUT = 0.25
_PING_CACHE = 1.0


def load_uuid(root: Path) -> str:
    """The server's uuid, made once and kept under the data root like containerd's."""
    path = root / "uuid"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        value = str(uuid.uuid4())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value)
        tmp.rename(path)
        return value


class IntrospectionServicer(pb.introspection_grpc.IntrospectionServicer):
    def __init__(self, bus: Bus, cfg: Config) -> None:
        self.bus, self.cfg = bus, cfg
        self.uuid = load_uuid(cfg.root)
        self._up: dict[str, str] = {}   # backend -> "" when up, else the reason
        self._checked = 0.0

    async def _ping(self, backend: str, host_local: bool) -> str:
        subject = (local(self.cfg.prefix, backend, self.cfg.host, "ping") if host_local
                   else shared(self.cfg.prefix, backend, "ping"))
        try:
            await self.bus.request(subject, None, timeout=_PING_TIMEOUT)
            return ""
        except FlotillaError as exc:
            return f"{backend} service is not running: {exc.message}"

    async def _backends(self) -> dict[str, str]:
        # a backend found down is asked again at once: a starting suite comes up in a moment
        if time.monotonic() - self._checked > _PING_CACHE or any(self._up.values()):
            wanted = {(p.backend, p.host_local) for p in PLUGINS if p.backend}
            results = await asyncio.gather(*(self._ping(b, h) for b, h in wanted))
            self._up = {b: r for (b, _), r in zip(wanted, results)}
            self._checked = time.monotonic()
        return self._up

    def _plugin(self, entry: PluginEntry, down: str) -> pb.introspection.Plugin:
        plugin = pb.introspection.Plugin(type=entry.type, id=entry.id)
        if entry.with_platform:
            plugin.platforms.append(PLATFORM)
        reason = down if down else ("" if entry.implemented else "not implemented by flotilla yet")
        if reason:
            plugin.init_err.CopyFrom(status_pb2.Status(code=14 if down else 12, message=reason))
        return plugin

    @unary("Introspection.Plugins")
    async def Plugins(self, request: pb.introspection.PluginsRequest, context: aio.ServicerContext) -> pb.introspection.PluginsResponse:
        wanted = filters.parse(request.filters)
        up = await self._backends()
        out = pb.introspection.PluginsResponse()
        for entry in PLUGINS:
            if wanted.matches(filters.lookup_fields({"type": entry.type, "id": entry.id})):
                out.plugins.append(self._plugin(entry, up.get(entry.backend, "")))
        return out

    @unary("Introspection.Server")
    async def Server(self, request: empty_pb2.Empty, context: aio.ServicerContext) -> pb.introspection.ServerResponse:
        return pb.introspection.ServerResponse(uuid=self.uuid)
