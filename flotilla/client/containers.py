"""Container records: id, image, runtime, OCI spec, snapshot."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2, field_mask_pb2

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pb
from flotilla._api.containerd.api.services.containers.v1 import containers_pb2_grpc as pb_grpc

from ._conn import Conn, rpc
from .types import ts

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
DEFAULT_RUNTIME = "io.containerd.runc.v2"


@dataclass
class Container:
    id: str
    image: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    snapshotter: str = "overlayfs"
    snapshot_key: str = ""
    runtime: str = DEFAULT_RUNTIME
    labels: dict[str, str] = field(default_factory=dict)
    created_at: _dt.datetime | None = None
    updated_at: _dt.datetime | None = None

    def to_pb(self) -> pb.Container:
        spec = any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(self.spec).encode()) if self.spec else None
        return pb.Container(id=self.id, image=self.image, labels=dict(self.labels), spec=spec,
                            snapshotter=self.snapshotter, snapshot_key=self.snapshot_key,
                            runtime=pb.Container.Runtime(name=self.runtime))

    @staticmethod
    def from_pb(p: pb.Container) -> "Container":
        spec: dict[str, Any] = {}
        if p.spec.value:
            try:
                spec = json.loads(p.spec.value)
            except ValueError:
                spec = {}
        return Container(p.id, p.image, spec, p.snapshotter, p.snapshot_key, p.runtime.name, dict(p.labels),
                         ts(p.created_at), ts(p.updated_at))


class Containers:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = pb_grpc.ContainersStub(conn.channel)

    @rpc
    async def get(self, id: str) -> Container:
        resp = await self._stub.Get(pb.GetContainerRequest(id=id), metadata=self._conn.metadata())
        return Container.from_pb(resp.container)

    @rpc
    async def list(self, *filters: str) -> list[Container]:
        resp = await self._stub.List(pb.ListContainersRequest(filters=list(filters)), metadata=self._conn.metadata())
        return [Container.from_pb(c) for c in resp.containers]

    @rpc
    async def create(self, container: Container) -> Container:
        resp = await self._stub.Create(pb.CreateContainerRequest(container=container.to_pb()),
                                       metadata=self._conn.metadata())
        return Container.from_pb(resp.container)

    @rpc
    async def update(self, container: Container, *paths: str) -> Container:
        mask = field_mask_pb2.FieldMask(paths=list(paths)) if paths else None
        resp = await self._stub.Update(pb.UpdateContainerRequest(container=container.to_pb(), update_mask=mask),
                                       metadata=self._conn.metadata())
        return Container.from_pb(resp.container)

    @rpc
    async def delete(self, id: str) -> None:
        await self._stub.Delete(pb.DeleteContainerRequest(id=id), metadata=self._conn.metadata())
