"""Leases: what a lease holds is safe from garbage collection until the lease ends."""

from __future__ import annotations

import contextlib
import datetime as _dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from flotilla._api.containerd.api.services.leases.v1 import leases_pb2 as pb
from flotilla._api.containerd.api.services.leases.v1 import leases_pb2_grpc as pb_grpc

from ._conn import Conn, current_lease, rpc
from .types import ts

EXPIRE_LABEL = "containerd.io/gc.expire"


@dataclass
class Lease:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: _dt.datetime | None = None


@dataclass
class Resource:
    id: str
    type: str   # "content", "snapshots/<snapshotter>", "ingests"


class Leases:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = pb_grpc.LeasesStub(conn.channel)

    @rpc
    async def create(self, id: str = "", labels: dict[str, str] | None = None,
                     expire: _dt.timedelta | None = None) -> Lease:
        labels = dict(labels or {})
        if expire is not None:
            when = _dt.datetime.now(_dt.timezone.utc) + expire
            labels[EXPIRE_LABEL] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        resp = await self._stub.Create(pb.CreateRequest(id=id or f"flotilla-{uuid.uuid4().hex}", labels=labels),
                                       metadata=self._conn.metadata())
        return Lease(resp.lease.id, dict(resp.lease.labels), ts(resp.lease.created_at))

    @rpc
    async def list(self, *filters: str) -> list[Lease]:
        resp = await self._stub.List(pb.ListRequest(filters=list(filters)), metadata=self._conn.metadata())
        return [Lease(lease.id, dict(lease.labels), ts(lease.created_at)) for lease in resp.leases]

    @rpc
    async def delete(self, id: str, sync: bool = False) -> None:
        await self._stub.Delete(pb.DeleteRequest(id=id, sync=sync), metadata=self._conn.metadata())

    @rpc
    async def resources(self, id: str) -> list[Resource]:
        resp = await self._stub.ListResources(pb.ListResourcesRequest(id=id), metadata=self._conn.metadata())
        return [Resource(r.id, r.type) for r in resp.resources]

    @rpc
    async def add_resource(self, id: str, resource: Resource) -> None:
        await self._stub.AddResource(pb.AddResourceRequest(id=id, resource=pb.Resource(id=resource.id, type=resource.type)),
                                     metadata=self._conn.metadata())

    @contextlib.asynccontextmanager
    async def scope(self, expire: _dt.timedelta = _dt.timedelta(hours=24), sync: bool = False
                    ) -> AsyncIterator[Lease]:
        """A temporary lease carried by every call in this task; deleted on exit.
        An enclosing scope's lease is reused (nothing new is created)."""
        if current_lease.get():
            yield Lease(current_lease.get())
            return
        lease = await self.create(expire=expire)
        token = current_lease.set(lease.id)
        try:
            yield lease
        finally:
            current_lease.reset(token)
            await self.delete(lease.id, sync=sync)
