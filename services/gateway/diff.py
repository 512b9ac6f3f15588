"""containerd.services.diff.v1.Diff, backed by this host's snapshots service (it owns the
directories the mounts name)."""

from __future__ import annotations

from grpc import aio

from flotilla._api.containerd.api.services.diff.v1 import diff_pb2 as pbd
from flotilla._api.containerd.api.services.diff.v1 import diff_pb2_grpc as pbd_grpc
from flotilla._api.containerd.api.types import descriptor_pb2
from flotilla.libs.api.snapshots import Descriptor, SnapshotsClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config

from .rpc import namespace, timeout, unary
from .snapshots import lease, mounts_from_pb

_LAYER_TIMEOUT = 600.0  # a big layer takes a while; the client's deadline still applies


def descriptor_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size,
                                     annotations=d.annotations)


class DiffServicer(pbd_grpc.DiffServicer):
    def __init__(self, client: SnapshotsClient) -> None:
        self.client = client

    @classmethod
    def register(cls, server: aio.Server, bus: Bus, cfg: Config) -> None:
        pbd_grpc.add_DiffServicer_to_server(cls(SnapshotsClient(bus, cfg.prefix, cfg.host)), server)

    @unary("Diff.Apply")
    async def Apply(self, request: pbd.ApplyRequest, context: aio.ServicerContext) -> pbd.ApplyResponse:
        d = request.diff
        desc = Descriptor(media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations))
        applied = await self.client.apply(namespace(context), desc, mounts_from_pb(request.mounts),
                                          timeout(context, _LAYER_TIMEOUT))
        return pbd.ApplyResponse(applied=descriptor_pb(applied))

    @unary("Diff.Diff")
    async def Diff(self, request: pbd.DiffRequest, context: aio.ServicerContext) -> pbd.DiffResponse:
        out = await self.client.diff(namespace(context), mounts_from_pb(request.left), mounts_from_pb(request.right),
                                     request.media_type, request.ref, dict(request.labels),
                                     timeout(context, _LAYER_TIMEOUT), lease(context))
        return pbd.DiffResponse(diff=descriptor_pb(out))
