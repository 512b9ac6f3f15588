"""The diff service: apply a layer onto mounts, or compute a layer from two mount sets."""

from __future__ import annotations

from flotilla._api.containerd.api.services.diff.v1 import diff_pb2 as pb
from flotilla._api.containerd.api.services.diff.v1 import diff_pb2_grpc as pb_grpc
from flotilla.libs.distribution import Descriptor

from ._conn import Conn, rpc
from .types import Mount, desc_from_pb, desc_to_pb

UNCOMPRESSED_LABEL = "containerd.io/uncompressed"


class Diff:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = pb_grpc.DiffStub(conn.channel)

    @rpc
    async def apply(self, layer: Descriptor, mounts: list[Mount]) -> Descriptor:
        """Apply ``layer`` (from the content store) onto ``mounts``; returns the uncompressed descriptor."""
        resp = await self._stub.Apply(pb.ApplyRequest(diff=desc_to_pb(layer), mounts=[m.to_pb() for m in mounts]),
                                      metadata=self._conn.metadata())
        return desc_from_pb(resp.applied)

    @rpc
    async def compare(self, lower: list[Mount], upper: list[Mount], media_type: str = "", ref: str = "",
                      labels: dict[str, str] | None = None) -> Descriptor:
        resp = await self._stub.Diff(pb.DiffRequest(left=[m.to_pb() for m in lower], right=[m.to_pb() for m in upper],
                                                    media_type=media_type, ref=ref, labels=labels or {}),
                                     metadata=self._conn.metadata())
        return desc_from_pb(resp.diff)
