"""The metadata service's contract: subjects, records, and its client over the bus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

CONTAINER_GET = "containers.get"        # ContainerRef -> Container
CONTAINER_LIST = "containers.list"      # ListRequest -> list[Container]
CONTAINER_CREATE = "containers.create"  # ContainerCreate -> Container
CONTAINER_UPDATE = "containers.update"  # ContainerUpdate -> Container
CONTAINER_DELETE = "containers.delete"  # ContainerRef -> None

IMAGE_GET = "images.get"                # ImageRef -> Image
IMAGE_LIST = "images.list"              # ListRequest -> list[Image]
IMAGE_CREATE = "images.create"          # ImageCreate -> Image
IMAGE_UPDATE = "images.update"          # ImageUpdate -> Image
IMAGE_DELETE = "images.delete"          # ImageDelete -> None

LEASE_CREATE = "leases.create"          # LeaseCreate -> Lease
LEASE_DELETE = "leases.delete"          # LeaseDelete -> None
LEASE_LIST = "leases.list"              # ListRequest -> list[Lease]
LEASE_ADD_RESOURCE = "leases.add_resource"        # LeaseResourceRequest -> None
LEASE_DELETE_RESOURCE = "leases.delete_resource"  # LeaseResourceRequest -> None
LEASE_LIST_RESOURCES = "leases.list_resources"    # LeaseRef -> list[Resource]

GC_RUN = "gc.run"                       # GCRequest -> GCStats (a collection, waited for)


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


@dataclass
class AnyValue:
    """A google.protobuf.Any kept as given: its type URL and encoded bytes."""
    type_url: str = ""
    value: bytes = b""


@dataclass
class Runtime:
    name: str = ""
    options: AnyValue | None = None


@dataclass
class Container:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    runtime: Runtime = field(default_factory=Runtime)
    spec: AnyValue | None = None
    snapshotter: str = ""
    snapshot_key: str = ""
    created_at: int = 0  # unix nanoseconds, set by the store
    updated_at: int = 0
    extensions: dict[str, AnyValue] = field(default_factory=dict)


@dataclass
class ContainerRef:
    namespace: str
    id: str


@dataclass
class ListRequest:
    namespace: str
    filters: list[str] = field(default_factory=list)
    # paging (containers and images): with ``budget`` > 0 the result is a ListPage of about
    # that many bytes, continuing after the key ``after``; 0 answers one plain list
    after: str = ""
    budget: int = 0


@dataclass
class ListPage:
    items: list[dict[str, Any]]
    next: str = ""  # the key to continue after; "" when this page is the last


PAGE_BUDGET = 2 << 20  # bytes per page: well under NATS' message limit


@dataclass
class ContainerCreate:
    namespace: str
    container: Container


@dataclass
class ContainerUpdate:
    namespace: str
    container: Container
    paths: list[str] = field(default_factory=list)  # field mask; empty = containerd's full replace


@dataclass
class Descriptor:
    media_type: str = ""
    digest: str = ""
    size: int = 0
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Image:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    target: Descriptor = field(default_factory=Descriptor)
    created_at: int = 0
    updated_at: int = 0


@dataclass
class ImageRef:
    namespace: str
    name: str


@dataclass
class ImageCreate:
    namespace: str
    image: Image


@dataclass
class ImageUpdate:
    namespace: str
    image: Image
    paths: list[str] = field(default_factory=list)


@dataclass
class ImageDelete:
    namespace: str
    name: str
    sync: bool = False  # wait for a garbage collection before answering


@dataclass
class Lease:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0


@dataclass
class LeaseRef:
    namespace: str
    id: str


@dataclass
class LeaseCreate:
    namespace: str
    lease: Lease


@dataclass
class LeaseDelete:
    namespace: str
    id: str
    sync: bool = False


@dataclass
class Resource:
    id: str
    type: str  # "content", "ingests" or "snapshots/<snapshotter>"


@dataclass
class LeaseResourceRequest:
    namespace: str
    lease: str
    resource: Resource


@dataclass
class GCRequest:
    pass


@dataclass
class GCStats:
    content_removed: int = 0
    snapshots_removed: int = 0
    leases_expired: int = 0
    skipped: list[str] = field(default_factory=list)  # stores that did not answer


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

    # -- containers ----------------------------------------------------------------------

    async def get_container(self, namespace: str, id: str, timeout: float = 10.0) -> Container:
        data = await self._call(CONTAINER_GET, ContainerRef(namespace, id), timeout, True)
        return from_wire(Container, data)  # type: ignore[arg-type]

    async def _pages(self, method: str, namespace: str, filters: list[str] | None, timeout: float) -> list[Any]:
        items: list[Any] = []
        after = ""
        while True:
            data = await self._call(method, ListRequest(namespace, list(filters or []), after, PAGE_BUDGET),
                                    timeout, True)
            # read as a plain map: converting thousands of items field by field costs more
            # than the call itself
            items += data["items"]  # type: ignore[index]
            after = data.get("next", "")  # type: ignore[union-attr]
            if not after:
                return items

    async def list_containers(self, namespace: str, filters: list[str] | None = None,
                              timeout: float = 10.0) -> list[Container]:
        data = await self._pages(CONTAINER_LIST, namespace, filters, timeout)
        return [from_wire(Container, d) for d in data]

    async def list_containers_wire(self, namespace: str, filters: list[str] | None = None,
                                   timeout: float = 10.0) -> list[dict[str, Any]]:
        """The containers as wire maps (the fields of Container): for callers that convert
        thousands of them into another shape anyway."""
        return await self._pages(CONTAINER_LIST, namespace, filters, timeout)

    async def list_images_wire(self, namespace: str, filters: list[str] | None = None,
                               timeout: float = 10.0) -> list[dict[str, Any]]:
        """The images as wire maps (the fields of Image)."""
        return await self._pages(IMAGE_LIST, namespace, filters, timeout)

    async def create_container(self, namespace: str, container: Container, timeout: float = 10.0) -> Container:
        data = await self._call(CONTAINER_CREATE, ContainerCreate(namespace, container), timeout, False)
        return from_wire(Container, data)  # type: ignore[arg-type]

    async def update_container(self, namespace: str, container: Container, paths: list[str] | None = None,
                               timeout: float = 10.0) -> Container:
        data = await self._call(CONTAINER_UPDATE, ContainerUpdate(namespace, container, list(paths or [])),
                                timeout, False)
        return from_wire(Container, data)  # type: ignore[arg-type]

    async def delete_container(self, namespace: str, id: str, timeout: float = 10.0) -> None:
        await self._call(CONTAINER_DELETE, ContainerRef(namespace, id), timeout, False)

    # -- images --------------------------------------------------------------------------

    async def get_image(self, namespace: str, name: str, timeout: float = 10.0) -> Image:
        data = await self._call(IMAGE_GET, ImageRef(namespace, name), timeout, True)
        return from_wire(Image, data)  # type: ignore[arg-type]

    async def list_images(self, namespace: str, filters: list[str] | None = None,
                          timeout: float = 10.0) -> list[Image]:
        data = await self._pages(IMAGE_LIST, namespace, filters, timeout)
        return [from_wire(Image, d) for d in data]

    async def create_image(self, namespace: str, image: Image, timeout: float = 10.0) -> Image:
        data = await self._call(IMAGE_CREATE, ImageCreate(namespace, image), timeout, False)
        return from_wire(Image, data)  # type: ignore[arg-type]

    async def update_image(self, namespace: str, image: Image, paths: list[str] | None = None,
                           timeout: float = 10.0) -> Image:
        data = await self._call(IMAGE_UPDATE, ImageUpdate(namespace, image, list(paths or [])), timeout, False)
        return from_wire(Image, data)  # type: ignore[arg-type]

    async def delete_image(self, namespace: str, name: str, sync: bool = False, timeout: float = 10.0) -> None:
        await self._call(IMAGE_DELETE, ImageDelete(namespace, name, sync), timeout, False)

    # -- leases --------------------------------------------------------------------------

    async def create_lease(self, namespace: str, lease: Lease, timeout: float = 10.0) -> Lease:
        data = await self._call(LEASE_CREATE, LeaseCreate(namespace, lease), timeout, False)
        return from_wire(Lease, data)  # type: ignore[arg-type]

    async def delete_lease(self, namespace: str, id: str, sync: bool = False, timeout: float = 10.0) -> None:
        await self._call(LEASE_DELETE, LeaseDelete(namespace, id, sync), timeout, False)

    async def list_leases(self, namespace: str, filters: list[str] | None = None,
                          timeout: float = 10.0) -> list[Lease]:
        data = await self._call(LEASE_LIST, ListRequest(namespace, list(filters or [])), timeout, True)
        return [from_wire(Lease, d) for d in data]  # type: ignore[union-attr]

    async def add_lease_resource(self, namespace: str, lease: str, resource: Resource,
                                 timeout: float = 10.0) -> None:
        # adding the same reference twice is harmless: idempotent
        await self._call(LEASE_ADD_RESOURCE, LeaseResourceRequest(namespace, lease, resource), timeout, True)

    async def delete_lease_resource(self, namespace: str, lease: str, resource: Resource,
                                    timeout: float = 10.0) -> None:
        await self._call(LEASE_DELETE_RESOURCE, LeaseResourceRequest(namespace, lease, resource), timeout, True)

    async def list_lease_resources(self, namespace: str, lease: str, timeout: float = 10.0) -> list[Resource]:
        data = await self._call(LEASE_LIST_RESOURCES, LeaseRef(namespace, lease), timeout, True)
        return [from_wire(Resource, d) for d in data]  # type: ignore[union-attr]

    # -- garbage collection --------------------------------------------------------------

    async def collect_garbage(self, timeout: float = 60.0) -> GCStats:
        # not idempotent for retries: a resend after a slow first attempt would queue a
        # second whole collection behind the first
        data = await self._call(GC_RUN, GCRequest(), timeout, False)
        return from_wire(GCStats, data)  # type: ignore[arg-type]
