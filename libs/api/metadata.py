"""The metadata service's contract: its records, its routes (libs/routes.py) and its client
over the bus."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from .. import subjects
from ..routes import Route, method_name
from ..subjects import shared
from ..wire import Wired, from_wire

if TYPE_CHECKING:  # the bus (nats) is not imported for a contract's records and subjects
    from ..bus import Bus

SERVICE = "metadata"
R = TypeVar("R")


def stem(prefix: str) -> str:
    """Where the service's routes live: ``<prefix>.metadata``, each at ``<stem>.<method>``."""
    return subjects.stem(prefix, SERVICE)


def subject(prefix: str, method: Route[Any, Any] | str) -> str:
    """A route's subject; a plain method name (e.g. "ping") names one outside the table."""
    return shared(prefix, SERVICE, method_name(method))


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


# A container is the host's whose gateway made it (its snapshot and task live there):
# container requests name that host; "" is the metadata instance's own (single-host).
@dataclass
class ContainerRef:
    namespace: str
    id: str
    host: str = ""


@dataclass
class ListRequest:
    namespace: str
    filters: list[str] = field(default_factory=list)
    # paging (containers and images): with ``budget`` > 0 the result is a ListPage of about
    # that many bytes, continuing after the key ``after``; 0 answers one plain list
    after: str = ""
    budget: int = 0
    host: str = ""  # containers: whose (see ContainerRef); images and leases are the farm's
    # containers and images, paged: the page's records as containerd's list answer encodes
    # them (ListPage.encoded), not as maps
    encoded: bool = False


@dataclass
class ListPage:
    items: list[dict[str, Any]]
    next: str = ""  # the key to continue after; "" when this page is the last
    # asked ``encoded``: the records as entries of containerd's list answer, joined (items empty)
    encoded: bytes = b""

    def wired(self) -> Wired:
        """The page as it travels, its items not walked again (they are plain maps)."""
        return Wired(items=self.items, next=self.next, encoded=self.encoded)


PAGE_BUDGET = 2 << 20  # bytes per page: well under NATS' message limit


@dataclass
class ContainerCreate:
    namespace: str
    container: Container
    host: str = ""


@dataclass
class ContainerUpdate:
    namespace: str
    container: Container
    paths: list[str] = field(default_factory=list)  # field mask; empty = containerd's full replace
    host: str = ""


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


# a lease whose label's time (RFC 3339) has passed holds nothing: the collector removes it
LABEL_EXPIRE = "containerd.io/gc.expire"


@dataclass
class Lease:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0


def expiring_lease(name: str, ttl: timedelta) -> Lease:
    """A new lease ``<name>-<random>`` that the collector ends after ``ttl`` if its holder,
    which deletes it when done, dies first."""
    expire = (datetime.now(timezone.utc) + ttl).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return Lease(f"{name}-{uuid.uuid4().hex}", {LABEL_EXPIRE: expire})


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



# -- routes: request record -> reply record ------------------------------------------------
# Writes not marked idempotent are sent again with a request id, so they are done once
# (libs/journal.py).

NAMESPACE_GET: Route[NamespaceName, Namespace] = Route("namespaces.get", NamespaceName, Namespace, True)
NAMESPACE_LIST: Route[None, list[Namespace]] = Route("namespaces.list", None, list[Namespace], True)
NAMESPACE_CREATE: Route[NamespaceCreate, Namespace] = Route("namespaces.create", NamespaceCreate, Namespace)
# setting labels to given values is idempotent
NAMESPACE_UPDATE: Route[NamespaceUpdate, Namespace] = Route("namespaces.update", NamespaceUpdate, Namespace, True)
NAMESPACE_DELETE: Route[NamespaceName, None] = Route("namespaces.delete", NamespaceName)

CONTAINER_GET: Route[ContainerRef, Container] = Route("containers.get", ContainerRef, Container, True)
# paged lists answer a ListPage (or with budget 0, a list) of plain maps: converting
# thousands of items field by field costs more than the call itself, so the client reads
# them as maps (reply None) and converts only where a caller wants records
CONTAINER_LIST: Route[ListRequest, Any] = Route("containers.list", ListRequest, None, True)
CONTAINER_CREATE: Route[ContainerCreate, Container] = Route("containers.create", ContainerCreate, Container)
CONTAINER_UPDATE: Route[ContainerUpdate, Container] = Route("containers.update", ContainerUpdate, Container)
CONTAINER_DELETE: Route[ContainerRef, None] = Route("containers.delete", ContainerRef)

IMAGE_GET: Route[ImageRef, Image] = Route("images.get", ImageRef, Image, True)
IMAGE_LIST: Route[ListRequest, Any] = Route("images.list", ListRequest, None, True)  # paged: as containers
IMAGE_CREATE: Route[ImageCreate, Image] = Route("images.create", ImageCreate, Image)
IMAGE_UPDATE: Route[ImageUpdate, Image] = Route("images.update", ImageUpdate, Image)
IMAGE_DELETE: Route[ImageDelete, None] = Route("images.delete", ImageDelete)

LEASE_CREATE: Route[LeaseCreate, Lease] = Route("leases.create", LeaseCreate, Lease)
LEASE_DELETE: Route[LeaseDelete, None] = Route("leases.delete", LeaseDelete)
LEASE_LIST: Route[ListRequest, list[Lease]] = Route("leases.list", ListRequest, list[Lease], True)
# adding the same reference twice is harmless: idempotent (and so is removing it)
LEASE_ADD_RESOURCE: Route[LeaseResourceRequest, None] = Route("leases.add_resource", LeaseResourceRequest,
                                                              None, True)
LEASE_DELETE_RESOURCE: Route[LeaseResourceRequest, None] = Route("leases.delete_resource", LeaseResourceRequest,
                                                                 None, True)
LEASE_LIST_RESOURCES: Route[LeaseRef, list[Resource]] = Route("leases.list_resources", LeaseRef,
                                                              list[Resource], True)

# a collection, waited for. Not idempotent for retries: a resend after a slow first attempt
# would queue a second whole collection behind the first
GC_RUN: Route[GCRequest, GCStats] = Route("gc.run", GCRequest, GCStats, False, timeout=60.0)


class MetadataClient:
    """Calls the metadata service; reads are idempotent and retried until the deadline.
    A ``timeout`` of None is the route's default (libs/routes.py). Container calls address
    ``host``'s containers ("" the answering metadata instance's host: single-host set-ups)."""

    def __init__(self, bus: Bus, prefix: str, host: str = "") -> None:
        self.bus, self.prefix, self.host = bus, prefix, host

    async def _call(self, route: Route[Any, R], request: Any, timeout: float | None) -> R:
        return await self.bus.call(subject(self.prefix, route), route, request, timeout=timeout)

    async def get_namespace(self, name: str, timeout: float | None = None) -> Namespace:
        return await self._call(NAMESPACE_GET, NamespaceName(name), timeout)

    async def list_namespaces(self, timeout: float | None = None) -> list[Namespace]:
        return await self._call(NAMESPACE_LIST, None, timeout)

    async def create_namespace(self, ns: Namespace, caller: str = "", timeout: float | None = None) -> Namespace:
        return await self._call(NAMESPACE_CREATE, NamespaceCreate(ns, caller), timeout)

    async def update_namespace(self, ns: Namespace, paths: list[str], caller: str = "",
                               timeout: float | None = None) -> Namespace:
        return await self._call(NAMESPACE_UPDATE, NamespaceUpdate(ns, paths, caller), timeout)

    async def delete_namespace(self, name: str, timeout: float | None = None) -> None:
        await self._call(NAMESPACE_DELETE, NamespaceName(name), timeout)

    # -- containers ----------------------------------------------------------------------

    async def get_container(self, namespace: str, id: str, timeout: float | None = None) -> Container:
        return await self._call(CONTAINER_GET, ContainerRef(namespace, id, self.host), timeout)

    async def _pages(self, route: Route[ListRequest, Any], namespace: str, filters: list[str] | None,
                     timeout: float | None, host: str = "", encoded: bool = False) -> list[Any]:
        """Every page's items, or with ``encoded`` every page's encoded entries."""
        items: list[Any] = []
        after = ""
        while True:
            data = await self._call(route, ListRequest(namespace, list(filters or []), after, PAGE_BUDGET, host,
                                                       encoded), timeout)
            # read as a plain map: converting thousands of items field by field costs more
            # than the call itself
            if encoded:
                items.append(data["encoded"])
            else:
                items += data["items"]
            after = data.get("next", "")
            if not after:
                return items

    async def list_containers_encoded(self, namespace: str, filters: list[str] | None = None,
                                      timeout: float | None = None) -> bytes:
        """The containers as containerd's ``ListContainersResponse`` encodes them (each entry
        also a whole ``ListContainerMessage``: libs/api/listed.py)."""
        return b"".join(await self._pages(CONTAINER_LIST, namespace, filters, timeout, self.host, encoded=True))

    async def list_images_encoded(self, namespace: str, filters: list[str] | None = None,
                                  timeout: float | None = None) -> bytes:
        """The images as containerd's ``ListImagesResponse`` encodes them."""
        return b"".join(await self._pages(IMAGE_LIST, namespace, filters, timeout, encoded=True))

    async def list_containers(self, namespace: str, filters: list[str] | None = None,
                              timeout: float | None = None) -> list[Container]:
        data = await self._pages(CONTAINER_LIST, namespace, filters, timeout, self.host)
        return [from_wire(Container, d) for d in data]

    async def create_container(self, namespace: str, container: Container,
                               timeout: float | None = None) -> Container:
        return await self._call(CONTAINER_CREATE, ContainerCreate(namespace, container, self.host), timeout)

    async def update_container(self, namespace: str, container: Container, paths: list[str] | None = None,
                               timeout: float | None = None) -> Container:
        return await self._call(CONTAINER_UPDATE,
                                ContainerUpdate(namespace, container, list(paths or []), self.host), timeout)

    async def delete_container(self, namespace: str, id: str, timeout: float | None = None) -> None:
        await self._call(CONTAINER_DELETE, ContainerRef(namespace, id, self.host), timeout)

    # -- images --------------------------------------------------------------------------

    async def get_image(self, namespace: str, name: str, timeout: float | None = None) -> Image:
        return await self._call(IMAGE_GET, ImageRef(namespace, name), timeout)

    async def list_images(self, namespace: str, filters: list[str] | None = None,
                          timeout: float | None = None) -> list[Image]:
        data = await self._pages(IMAGE_LIST, namespace, filters, timeout)
        return [from_wire(Image, d) for d in data]

    async def create_image(self, namespace: str, image: Image, timeout: float | None = None) -> Image:
        return await self._call(IMAGE_CREATE, ImageCreate(namespace, image), timeout)

    async def update_image(self, namespace: str, image: Image, paths: list[str] | None = None,
                           timeout: float | None = None) -> Image:
        return await self._call(IMAGE_UPDATE, ImageUpdate(namespace, image, list(paths or [])), timeout)

    async def delete_image(self, namespace: str, name: str, sync: bool = False,
                           timeout: float | None = None) -> None:
        await self._call(IMAGE_DELETE, ImageDelete(namespace, name, sync), timeout)

    # -- leases --------------------------------------------------------------------------

    async def create_lease(self, namespace: str, lease: Lease, timeout: float | None = None) -> Lease:
        return await self._call(LEASE_CREATE, LeaseCreate(namespace, lease), timeout)

    async def delete_lease(self, namespace: str, id: str, sync: bool = False, timeout: float | None = None) -> None:
        await self._call(LEASE_DELETE, LeaseDelete(namespace, id, sync), timeout)

    async def list_leases(self, namespace: str, filters: list[str] | None = None,
                          timeout: float | None = None) -> list[Lease]:
        return await self._call(LEASE_LIST, ListRequest(namespace, list(filters or [])), timeout)

    async def add_lease_resource(self, namespace: str, lease: str, resource: Resource,
                                 timeout: float | None = None) -> None:
        await self._call(LEASE_ADD_RESOURCE, LeaseResourceRequest(namespace, lease, resource), timeout)

    async def delete_lease_resource(self, namespace: str, lease: str, resource: Resource,
                                    timeout: float | None = None) -> None:
        await self._call(LEASE_DELETE_RESOURCE, LeaseResourceRequest(namespace, lease, resource), timeout)

    async def list_lease_resources(self, namespace: str, lease: str, timeout: float | None = None) -> list[Resource]:
        return await self._call(LEASE_LIST_RESOURCES, LeaseRef(namespace, lease), timeout)

    # -- garbage collection --------------------------------------------------------------

    async def collect_garbage(self, timeout: float | None = None) -> GCStats:
        return await self._call(GC_RUN, GCRequest(), timeout)
