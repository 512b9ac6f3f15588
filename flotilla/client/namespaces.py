"""Namespaces."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import field_mask_pb2

from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2 as pb
from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc

from ._conn import Conn, rpc


@dataclass
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


class Namespaces:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = pb_grpc.NamespacesStub(conn.channel)

    @rpc
    async def list(self) -> list[Namespace]:
        resp = await self._stub.List(pb.ListNamespacesRequest(), metadata=self._conn.metadata())
        return [Namespace(n.name, dict(n.labels)) for n in resp.namespaces]

    @rpc
    async def get(self, name: str) -> Namespace:
        resp = await self._stub.Get(pb.GetNamespaceRequest(name=name), metadata=self._conn.metadata())
        return Namespace(resp.namespace.name, dict(resp.namespace.labels))

    @rpc
    async def create(self, name: str, labels: dict[str, str] | None = None) -> Namespace:
        resp = await self._stub.Create(pb.CreateNamespaceRequest(
            namespace=pb.Namespace(name=name, labels=labels or {})), metadata=self._conn.metadata())
        return Namespace(resp.namespace.name, dict(resp.namespace.labels))

    @rpc
    async def set_labels(self, name: str, labels: dict[str, str]) -> Namespace:
        """Set (or, with an empty value, remove) the given labels."""
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
        await self._stub.Update(pb.UpdateNamespaceRequest(
            namespace=pb.Namespace(name=name, labels={k: v for k, v in labels.items() if v}),
            update_mask=mask), metadata=self._conn.metadata())
        # containerd 1.6 answers Update with an empty namespace: read it back
        return await self.get(name)

    @rpc
    async def delete(self, name: str) -> None:
        await self._stub.Delete(pb.DeleteNamespaceRequest(name=name), metadata=self._conn.metadata())
