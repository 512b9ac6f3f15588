"""The metadata service's contract: subjects, records, and its client over the bus."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..bus import Bus
from ..subjects import shared
from ..wire import from_wire

SERVICE = "metadata"

# methods; each request is the msgpack map of the record named beside it
NAMESPACE_GET = "namespaces.get"        # NamespaceName -> Namespace
NAMESPACE_LIST = "namespaces.list"      # None -> list[Namespace]
NAMESPACE_CREATE = "namespaces.create"  # NamespaceCreate -> Namespace
NAMESPACE_UPDATE = "namespaces.update"  # NamespaceUpdate -> Namespace
NAMESPACE_DELETE = "namespaces.delete"  # NamespaceName -> None


def subject(prefix: str, method: str) -> str:
    return shared(prefix, SERVICE, method)


@dataclass
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class NamespaceName:
    name: str


@dataclass
class NamespaceCreate:
    namespace: Namespace
    caller: str = ""  # the namespace of the calling context: containerd files the event there


@dataclass
class NamespaceUpdate:
    namespace: Namespace
    paths: list[str] = field(default_factory=list)  # field mask; empty replaces all labels
    caller: str = ""


class MetadataClient:
    """Calls the metadata service; reads are idempotent and retried until the deadline."""

    def __init__(self, bus: Bus, prefix: str) -> None:
        self.bus, self.prefix = bus, prefix

    async def _call(self, method: str, payload: object, timeout: float, idempotent: bool) -> object:
        return await self.bus.request(subject(self.prefix, method), payload,
                                      timeout=timeout, idempotent=idempotent)

    async def get_namespace(self, name: str, timeout: float = 10.0) -> Namespace:
        data = await self._call(NAMESPACE_GET, NamespaceName(name), timeout, True)
        return from_wire(Namespace, data)  # type: ignore[arg-type]

    async def list_namespaces(self, timeout: float = 10.0) -> list[Namespace]:
        data = await self._call(NAMESPACE_LIST, None, timeout, True)
        return [from_wire(Namespace, d) for d in data]  # type: ignore[union-attr]

    async def create_namespace(self, ns: Namespace, caller: str = "", timeout: float = 10.0) -> Namespace:
        data = await self._call(NAMESPACE_CREATE, NamespaceCreate(ns, caller), timeout, False)
        return from_wire(Namespace, data)  # type: ignore[arg-type]

    async def update_namespace(self, ns: Namespace, paths: list[str], caller: str = "",
                               timeout: float = 10.0) -> Namespace:
        # setting labels to given values is idempotent
        data = await self._call(NAMESPACE_UPDATE, NamespaceUpdate(ns, paths, caller), timeout, True)
        return from_wire(Namespace, data)  # type: ignore[arg-type]

    async def delete_namespace(self, name: str, timeout: float = 10.0) -> None:
        await self._call(NAMESPACE_DELETE, NamespaceName(name), timeout, False)
