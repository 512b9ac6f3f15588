"""containerd.services.namespaces.v1.Namespaces, backed by the metadata service."""

from __future__ import annotations

from google.protobuf import empty_pb2
from grpc import aio

from flotilla.libs.api import events as ev
from flotilla.libs.api.metadata import MetadataClient, Namespace

from . import pb
from .events import EventHub
from .records import RecordCache, event_key
from .rpc import caller_namespace, timeout, unary


def _to_pb(ns: Namespace) -> pb.namespaces.Namespace:
    return pb.namespaces.Namespace(name=ns.name, labels=ns.labels)


class NamespacesServicer(pb.namespaces_grpc.NamespacesServicer):
    def __init__(self, metadata: MetadataClient, default_timeout: float) -> None:
        self.metadata, self.default_timeout = metadata, default_timeout
        self._records: RecordCache[Namespace] = RecordCache()  # keyed ("", name); ctr gets one twice a run

    @classmethod
    def register(cls, server: aio.Server, metadata: MetadataClient, default_timeout: float, hub: EventHub) -> None:
        servicer = cls(metadata, default_timeout)
        # a Get of a namespace that is not there answers (no labels), as containerd's: so a
        # create drops too
        servicer._records.drop_on(hub, (ev.NamespaceCreate.TOPIC, ev.NamespaceUpdate.TOPIC, ev.NamespaceDelete.TOPIC),
                                  event_key("name", namespace_scoped=False))
        pb.namespaces_grpc.add_NamespacesServicer_to_server(servicer, server)

    @unary("Namespaces.Get")
    async def Get(self, request: pb.namespaces.GetNamespaceRequest, context: aio.ServicerContext) -> pb.namespaces.GetNamespaceResponse:
        limit = timeout(context, self.default_timeout)
        ns = await self._records.fetch(("", request.name), lambda: self.metadata.get_namespace(request.name, limit))
        return pb.namespaces.GetNamespaceResponse(namespace=_to_pb(ns))

    @unary("Namespaces.List")
    async def List(self, request: pb.namespaces.ListNamespacesRequest, context: aio.ServicerContext) -> pb.namespaces.ListNamespacesResponse:
        found = await self.metadata.list_namespaces(timeout(context, self.default_timeout))
        return pb.namespaces.ListNamespacesResponse(namespaces=[_to_pb(ns) for ns in found])

    @unary("Namespaces.Create")
    async def Create(self, request: pb.namespaces.CreateNamespaceRequest, context: aio.ServicerContext) -> pb.namespaces.CreateNamespaceResponse:
        ns = Namespace(request.namespace.name, dict(request.namespace.labels))
        created = await self.metadata.create_namespace(ns, caller_namespace(context),
                                                       timeout(context, self.default_timeout))
        return pb.namespaces.CreateNamespaceResponse(namespace=_to_pb(created))

    @unary("Namespaces.Update")
    async def Update(self, request: pb.namespaces.UpdateNamespaceRequest, context: aio.ServicerContext) -> pb.namespaces.UpdateNamespaceResponse:
        ns = Namespace(request.namespace.name, dict(request.namespace.labels))
        await self._records.change(("", ns.name), self.metadata.update_namespace(
            ns, list(request.update_mask.paths), caller_namespace(context), timeout(context, self.default_timeout)))
        # containerd answers Update with an empty response
        return pb.namespaces.UpdateNamespaceResponse()

    @unary("Namespaces.Delete")
    async def Delete(self, request: pb.namespaces.DeleteNamespaceRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self._records.change(("", request.name), self.metadata.delete_namespace(
            request.name, timeout(context, self.default_timeout)))
        return empty_pb2.Empty()
