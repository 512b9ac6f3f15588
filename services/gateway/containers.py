"""containerd.services.containers.v1.Containers, backed by the metadata service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import any_pb2, empty_pb2
from grpc import aio

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pbc
from flotilla._api.containerd.api.services.containers.v1 import containers_pb2_grpc as pbc_grpc
from flotilla.libs.api import events as ev
from flotilla.libs.api import listed
from flotilla.libs.api.metadata import AnyValue, Container, MetadataClient, Runtime
from flotilla.libs.errors import InvalidArgument
from flotilla.libs.wire import to_wire

from .events import EventHub
from .protomsg import constructor_fields
from .records import RecordCache, event_key
from .rpc import namespace, preencoded, streaming, timeout, unary


def any_from_pb(msg: any_pb2.Any) -> AnyValue:
    return AnyValue(msg.type_url, msg.value)


def container_from_pb(c: pbc.Container) -> Container:
    runtime = Runtime()
    if c.HasField("runtime"):
        runtime = Runtime(c.runtime.name, any_from_pb(c.runtime.options) if c.runtime.HasField("options") else None)
    return Container(
        id=c.id, labels=dict(c.labels), image=c.image, runtime=runtime,
        spec=any_from_pb(c.spec) if c.HasField("spec") else None,
        snapshotter=c.snapshotter, snapshot_key=c.snapshot_key,
        extensions={k: any_from_pb(v) for k, v in c.extensions.items()},
    )


def wire_to_pb(c: dict[str, Any]) -> pbc.Container:
    """A container's wire map into protobuf, without the dataclass on the way."""
    return pbc.Container(**constructor_fields(c))


class ContainerRecords:
    """The containers this gateway saw lately (``records``), shared by Containers.Get and the
    Tasks service's lookups: a ``ctr run`` gets its container three times, and each of its
    task's Create and Get looks it up once more."""

    def __init__(self, metadata: MetadataClient, hub: EventHub) -> None:
        self.metadata = metadata
        self.cache: RecordCache[Container] = RecordCache()
        self.cache.drop_on(hub, (ev.ContainerUpdate.TOPIC, ev.ContainerDelete.TOPIC), event_key("id"))

    async def get(self, namespace: str, id: str, limit: float) -> Container:
        return await self.cache.fetch((namespace, id), lambda: self.metadata.get_container(namespace, id, limit))


class ContainersServicer(pbc_grpc.ContainersServicer):
    def __init__(self, records: ContainerRecords, default_timeout: float) -> None:
        self.metadata, self.default_timeout = records.metadata, default_timeout
        self._records = records

    @classmethod
    def register(cls, server: aio.Server, records: ContainerRecords, default_timeout: float) -> None:
        pbc_grpc.add_ContainersServicer_to_server(cls(records, default_timeout), server)

    @unary("Containers.Get")
    async def Get(self, request: pbc.GetContainerRequest, context: aio.ServicerContext) -> pbc.GetContainerResponse:
        c = await self._records.get(namespace(context), request.id, timeout(context, self.default_timeout))
        return pbc.GetContainerResponse(container=wire_to_pb(to_wire(c)))

    @unary("Containers.List")
    async def List(self, request: pbc.ListContainersRequest, context: aio.ServicerContext) -> pbc.ListContainersResponse:
        # encoded by the metadata service as containerd encodes it, sent as it is
        found = await self.metadata.list_containers_encoded(namespace(context), list(request.filters),
                                                            timeout(context, self.default_timeout))
        return preencoded(context, found, pbc.ListContainersResponse)

    @streaming("Containers.ListStream")
    async def ListStream(self, request: pbc.ListContainersRequest,
                         context: aio.ServicerContext) -> AsyncIterator[pbc.ListContainerMessage]:
        found = await self.metadata.list_containers_encoded(namespace(context), list(request.filters),
                                                            timeout(context, self.default_timeout))
        for entry in listed.entries(found):  # each a whole ListContainerMessage
            yield preencoded(context, entry, pbc.ListContainerMessage)

    @unary("Containers.Create")
    async def Create(self, request: pbc.CreateContainerRequest, context: aio.ServicerContext) -> pbc.CreateContainerResponse:
        ns = namespace(context)
        c = await self._records.cache.keep((ns, request.container.id), self.metadata.create_container(
            ns, container_from_pb(request.container), timeout(context, self.default_timeout)))
        return pbc.CreateContainerResponse(container=wire_to_pb(to_wire(c)))

    @unary("Containers.Update")
    async def Update(self, request: pbc.UpdateContainerRequest, context: aio.ServicerContext) -> pbc.UpdateContainerResponse:
        if not request.container.id:
            raise InvalidArgument("Container.ID required")
        ns = namespace(context)
        c = await self._records.cache.change((ns, request.container.id), self.metadata.update_container(
            ns, container_from_pb(request.container), list(request.update_mask.paths),
            timeout(context, self.default_timeout)))
        return pbc.UpdateContainerResponse(container=wire_to_pb(to_wire(c)))

    @unary("Containers.Delete")
    async def Delete(self, request: pbc.DeleteContainerRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        ns = namespace(context)
        await self._records.cache.change((ns, request.id), self.metadata.delete_container(
            ns, request.id, timeout(context, self.default_timeout)))
        return empty_pb2.Empty()
