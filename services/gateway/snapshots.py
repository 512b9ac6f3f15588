"""containerd.services.snapshots.v1.Snapshots, backed by this host's snapshots service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2
from grpc import aio

from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2 as pbs
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc as pbs_grpc
from flotilla._api.containerd.api.types import mount_pb2
from flotilla.libs.api import events as ev
from flotilla.libs.api.snapshots import SNAPSHOTTERS, Info, Mount, SnapshotsClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import InvalidArgument

from .events import EventHub
from .protomsg import set_timestamp
from .records import Key, RecordCache
from .rpc import namespace, streaming, timeout, unary

LEASE_KEY = "containerd-lease"
_KINDS = {"view": pbs.VIEW, "active": pbs.ACTIVE, "committed": pbs.COMMITTED}
_LIST_BATCH = 100  # infos per List response, as containerd batches them


def lease(context: aio.ServicerContext) -> str:
    return next((v for k, v in context.invocation_metadata() or () if k == LEASE_KEY), "")


def check_snapshotter(name: str) -> str:
    # containerd looks the snapshotter up before it reads the namespace
    if not name:
        raise InvalidArgument("snapshotter argument missing: invalid argument")
    if name not in SNAPSHOTTERS:
        raise InvalidArgument(f"snapshotter not loaded: {name}: invalid argument")
    return name


def mounts_pb(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options) for m in mounts]


def mounts_from_pb(mounts: object) -> list[Mount]:
    return [Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))  # type: ignore[attr-defined]
            for m in mounts]  # type: ignore[attr-defined]


def info_pb(info: Info) -> pbs.Info:
    out = pbs.Info(name=info.name, parent=info.parent, kind=_KINDS.get(info.kind, 0), labels=info.labels)
    set_timestamp(out.created_at, info.created_at)
    set_timestamp(out.updated_at, info.updated_at)
    return out


def _key(ns: str, sn: str, key: str) -> Key:
    return (ns, f"{sn}/{key}")


class SnapshotsServicer(pbs_grpc.SnapshotsServicer):
    def __init__(self, client: SnapshotsClient, default_timeout: float) -> None:
        self.client, self.default_timeout = client, default_timeout
        # an active snapshot's mounts are fixed from its Prepare to its Commit or Remove, and
        # ctr asks them twice a run after preparing (services/gateway/records.py)
        self._mounts: RecordCache[list[Mount]] = RecordCache()

    @classmethod
    def register(cls, server: aio.Server, bus: Bus, cfg: Config, hub: EventHub) -> None:
        client = SnapshotsClient(bus, cfg.prefix, cfg.host)  # this host's snapshots service
        servicer = cls(client, cfg.request_timeout)
        for topic in (ev.SnapshotCommit.TOPIC, ev.SnapshotRemove.TOPIC):
            hub.watch(topic, servicer._on_gone)
        pbs_grpc.add_SnapshotsServicer_to_server(servicer, server)

    def _on_gone(self, event: dict[str, Any]) -> None:
        ns, key = str(event.get("namespace", "")), str((event.get("fields") or {}).get("key", ""))
        for sn in SNAPSHOTTERS:  # the event does not say which snapshotter
            self._mounts.drop(_key(ns, sn, key))

    def _t(self, context: aio.ServicerContext, scale: float = 1.0) -> float:
        return timeout(context, self.default_timeout * scale)

    @unary("Snapshots.Prepare")
    async def Prepare(self, request: pbs.PrepareSnapshotRequest, context: aio.ServicerContext) -> pbs.PrepareSnapshotResponse:
        sn, ns = check_snapshotter(request.snapshotter), namespace(context)
        mounts = await self._mounts.keep(_key(ns, sn, request.key), self.client.prepare(
            ns, sn, request.key, request.parent, dict(request.labels), lease(context), self._t(context, 6)))
        return pbs.PrepareSnapshotResponse(mounts=mounts_pb(mounts))

    @unary("Snapshots.View")
    async def View(self, request: pbs.ViewSnapshotRequest, context: aio.ServicerContext) -> pbs.ViewSnapshotResponse:
        sn, ns = check_snapshotter(request.snapshotter), namespace(context)
        mounts = await self._mounts.keep(_key(ns, sn, request.key), self.client.view(
            ns, sn, request.key, request.parent, dict(request.labels), lease(context), self._t(context, 6)))
        return pbs.ViewSnapshotResponse(mounts=mounts_pb(mounts))

    @unary("Snapshots.Mounts")
    async def Mounts(self, request: pbs.MountsRequest, context: aio.ServicerContext) -> pbs.MountsResponse:
        sn, ns, limit = check_snapshotter(request.snapshotter), namespace(context), self._t(context)
        mounts = await self._mounts.fetch(_key(ns, sn, request.key),
                                          lambda: self.client.mounts(ns, sn, request.key, limit))
        return pbs.MountsResponse(mounts=mounts_pb(mounts))

    @unary("Snapshots.Commit")
    async def Commit(self, request: pbs.CommitSnapshotRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        sn, ns = check_snapshotter(request.snapshotter), namespace(context)
        await self._mounts.change(_key(ns, sn, request.key), self.client.commit(
            ns, sn, request.name, request.key, dict(request.labels), lease(context), self._t(context, 6)))
        return empty_pb2.Empty()

    @unary("Snapshots.Remove")
    async def Remove(self, request: pbs.RemoveSnapshotRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        sn, ns = check_snapshotter(request.snapshotter), namespace(context)
        await self._mounts.change(_key(ns, sn, request.key),
                                  self.client.remove(ns, sn, request.key, self._t(context, 6)))
        return empty_pb2.Empty()

    @unary("Snapshots.Stat")
    async def Stat(self, request: pbs.StatSnapshotRequest, context: aio.ServicerContext) -> pbs.StatSnapshotResponse:
        sn = check_snapshotter(request.snapshotter)
        info = await self.client.stat(namespace(context), sn, request.key, self._t(context))
        return pbs.StatSnapshotResponse(info=info_pb(info))

    @unary("Snapshots.Update")
    async def Update(self, request: pbs.UpdateSnapshotRequest, context: aio.ServicerContext) -> pbs.UpdateSnapshotResponse:
        sn = check_snapshotter(request.snapshotter)
        i = request.info
        # only the name and labels can change; the times a client sends are ignored
        info = Info(kind="", name=i.name, parent=i.parent, labels=dict(i.labels))
        out = await self.client.update(namespace(context), sn, info, list(request.update_mask.paths), self._t(context))
        return pbs.UpdateSnapshotResponse(info=info_pb(out))

    @streaming("Snapshots.List")
    async def List(self, request: pbs.ListSnapshotsRequest, context: aio.ServicerContext) -> AsyncIterator[pbs.ListSnapshotsResponse]:
        sn = check_snapshotter(request.snapshotter)
        infos = await self.client.list(namespace(context), sn, list(request.filters), self._t(context, 3))
        for start in range(0, len(infos), _LIST_BATCH):
            yield pbs.ListSnapshotsResponse(info=[info_pb(i) for i in infos[start:start + _LIST_BATCH]])

    @unary("Snapshots.Usage")
    async def Usage(self, request: pbs.UsageRequest, context: aio.ServicerContext) -> pbs.UsageResponse:
        sn = check_snapshotter(request.snapshotter)
        usage = await self.client.usage(namespace(context), sn, request.key, self._t(context, 6))
        return pbs.UsageResponse(size=usage.size, inodes=usage.inodes)

    @unary("Snapshots.Cleanup")
    async def Cleanup(self, request: pbs.CleanupRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        # containerd 1.6 answers Unimplemented here (its metadata layer cleans up in GC);
        # Flotilla reclaims the directories no record names, host-wide, in any namespace
        sn = check_snapshotter(request.snapshotter)
        await self.client.cleanup(sn, self._t(context, 12))
        return empty_pb2.Empty()
