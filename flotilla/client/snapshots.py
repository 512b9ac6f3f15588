"""Snapshots of one snapshotter (``overlayfs`` by default)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from google.protobuf import field_mask_pb2

from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2 as pb
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc

from ._conn import Conn, rpc
from .types import Mount, ts

DEFAULT_SNAPSHOTTER = "overlayfs"
KINDS = {pb.UNKNOWN: "unknown", pb.VIEW: "view", pb.ACTIVE: "active", pb.COMMITTED: "committed"}


@dataclass
class SnapshotInfo:
    name: str
    parent: str = ""
    kind: str = "unknown"
    labels: dict[str, str] = field(default_factory=dict)
    created_at: _dt.datetime | None = None
    updated_at: _dt.datetime | None = None

    @staticmethod
    def from_pb(p: pb.Info) -> "SnapshotInfo":
        return SnapshotInfo(p.name, p.parent, KINDS.get(p.kind, "unknown"), dict(p.labels),
                            ts(p.created_at), ts(p.updated_at))


@dataclass
class Usage:
    size: int
    inodes: int


class Snapshots:
    def __init__(self, conn: Conn, snapshotter: str = DEFAULT_SNAPSHOTTER) -> None:
        self._conn = conn
        self.snapshotter = snapshotter
        self._stub = pb_grpc.SnapshotsStub(conn.channel)

    def __call__(self, snapshotter: str) -> "Snapshots":
        """The same API for another snapshotter."""
        return Snapshots(self._conn, snapshotter)

    @rpc
    async def prepare(self, key: str, parent: str = "", labels: dict[str, str] | None = None) -> list[Mount]:
        resp = await self._stub.Prepare(pb.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=labels or {}), metadata=self._conn.metadata())
        return [Mount.from_pb(m) for m in resp.mounts]

    @rpc
    async def view(self, key: str, parent: str = "", labels: dict[str, str] | None = None) -> list[Mount]:
        resp = await self._stub.View(pb.ViewSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=labels or {}), metadata=self._conn.metadata())
        return [Mount.from_pb(m) for m in resp.mounts]

    @rpc
    async def mounts(self, key: str) -> list[Mount]:
        resp = await self._stub.Mounts(pb.MountsRequest(snapshotter=self.snapshotter, key=key),
                                       metadata=self._conn.metadata())
        return [Mount.from_pb(m) for m in resp.mounts]

    @rpc
    async def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        await self._stub.Commit(pb.CommitSnapshotRequest(snapshotter=self.snapshotter, name=name, key=key,
                                                         labels=labels or {}), metadata=self._conn.metadata())

    @rpc
    async def remove(self, key: str) -> None:
        await self._stub.Remove(pb.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key),
                                metadata=self._conn.metadata())

    @rpc
    async def stat(self, key: str) -> SnapshotInfo:
        resp = await self._stub.Stat(pb.StatSnapshotRequest(snapshotter=self.snapshotter, key=key),
                                     metadata=self._conn.metadata())
        return SnapshotInfo.from_pb(resp.info)

    async def exists(self, key: str) -> bool:
        from flotilla.libs.errors import NotFound
        try:
            await self.stat(key)
            return True
        except NotFound:
            return False

    @rpc
    async def set_labels(self, key: str, labels: dict[str, str]) -> SnapshotInfo:
        resp = await self._stub.Update(pb.UpdateSnapshotRequest(
            snapshotter=self.snapshotter, info=pb.Info(name=key, labels={k: v for k, v in labels.items() if v}),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])),
            metadata=self._conn.metadata())
        return SnapshotInfo.from_pb(resp.info)

    @rpc
    async def list(self, *filters: str) -> list[SnapshotInfo]:
        out: list[SnapshotInfo] = []
        async for resp in self._stub.List(pb.ListSnapshotsRequest(snapshotter=self.snapshotter, filters=list(filters)),
                                          metadata=self._conn.metadata()):
            out += [SnapshotInfo.from_pb(i) for i in resp.info]
        return out

    @rpc
    async def usage(self, key: str) -> Usage:
        resp = await self._stub.Usage(pb.UsageRequest(snapshotter=self.snapshotter, key=key),
                                      metadata=self._conn.metadata())
        return Usage(resp.size, resp.inodes)
