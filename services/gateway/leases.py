"""containerd.services.leases.v1.Leases, backed by the metadata service."""

from __future__ import annotations

from google.protobuf import empty_pb2
from grpc import aio

from flotilla._api.containerd.api.services.leases.v1 import leases_pb2 as pbl
from flotilla._api.containerd.api.services.leases.v1 import leases_pb2_grpc as pbl_grpc
from flotilla.libs.api.metadata import Lease, MetadataClient, Resource

from .protomsg import set_timestamp
from .rpc import namespace, timeout, unary

_SYNC_TIMEOUT = 300.0


def lease_to_pb(lease: Lease) -> pbl.Lease:
    out = pbl.Lease(id=lease.id, labels=lease.labels)
    set_timestamp(out.created_at, lease.created_at)
    return out


class LeasesServicer(pbl_grpc.LeasesServicer):
    def __init__(self, metadata: MetadataClient, default_timeout: float) -> None:
        self.metadata, self.default_timeout = metadata, default_timeout

    @classmethod
    def register(cls, server: aio.Server, metadata: MetadataClient, default_timeout: float) -> None:
        pbl_grpc.add_LeasesServicer_to_server(cls(metadata, default_timeout), server)

    @unary("Leases.Create")
    async def Create(self, request: pbl.CreateRequest, context: aio.ServicerContext) -> pbl.CreateResponse:
        lease = await self.metadata.create_lease(namespace(context), Lease(request.id, dict(request.labels)),
                                                 timeout(context, self.default_timeout))
        return pbl.CreateResponse(lease=lease_to_pb(lease))

    @unary("Leases.Delete")
    async def Delete(self, request: pbl.DeleteRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        limit = _SYNC_TIMEOUT if request.sync else self.default_timeout
        await self.metadata.delete_lease(namespace(context), request.id, request.sync, timeout(context, limit))
        return empty_pb2.Empty()

    @unary("Leases.List")
    async def List(self, request: pbl.ListRequest, context: aio.ServicerContext) -> pbl.ListResponse:
        found = await self.metadata.list_leases(namespace(context), list(request.filters),
                                                timeout(context, self.default_timeout))
        return pbl.ListResponse(leases=[lease_to_pb(x) for x in found])

    @unary("Leases.AddResource")
    async def AddResource(self, request: pbl.AddResourceRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self.metadata.add_lease_resource(namespace(context), request.id,
                                               Resource(request.resource.id, request.resource.type),
                                               timeout(context, self.default_timeout))
        return empty_pb2.Empty()

    @unary("Leases.DeleteResource")
    async def DeleteResource(self, request: pbl.DeleteResourceRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self.metadata.delete_lease_resource(namespace(context), request.id,
                                                  Resource(request.resource.id, request.resource.type),
                                                  timeout(context, self.default_timeout))
        return empty_pb2.Empty()

    @unary("Leases.ListResources")
    async def ListResources(self, request: pbl.ListResourcesRequest, context: aio.ServicerContext) -> pbl.ListResourcesResponse:
        found = await self.metadata.list_lease_resources(namespace(context), request.id,
                                                         timeout(context, self.default_timeout))
        return pbl.ListResourcesResponse(resources=[pbl.Resource(id=r.id, type=r.type) for r in found])
