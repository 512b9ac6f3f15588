"""The snapshots service's NATS binding: host-local subjects, blocking work in threads."""

from __future__ import annotations

import asyncio

from flotilla.libs import events
from flotilla.libs.api import events as ev
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config

from . import api
from .diffs import Differ
from .store import SnapshotStore


class SnapshotsServer:
    def __init__(self, bus: Bus, cfg: Config, store: SnapshotStore, differ: Differ) -> None:
        self.bus, self.cfg, self.store, self.differ = bus, cfg, store, differ

    async def _event(self, namespace: str, event: ev.EventRecord) -> None:
        await events.publish(self.bus, self.cfg.prefix, namespace, event, host=self.cfg.host)

    async def prepare(self, r: api.PrepareRequest) -> list[api.Mount]:
        mounts = await asyncio.to_thread(self.store.prepare, r.namespace, r.snapshotter, r.key, r.parent,
                                         r.labels, r.lease)
        await self._event(r.namespace, ev.SnapshotPrepare(r.key, r.parent))
        return mounts

    async def view(self, r: api.PrepareRequest) -> list[api.Mount]:
        return await asyncio.to_thread(self.store.view, r.namespace, r.snapshotter, r.key, r.parent,
                                       r.labels, r.lease)

    async def mounts(self, r: api.KeyRequest) -> list[api.Mount]:
        return await asyncio.to_thread(self.store.mounts, r.namespace, r.snapshotter, r.key)

    async def commit(self, r: api.CommitRequest) -> None:
        await asyncio.to_thread(self.store.commit, r.namespace, r.snapshotter, r.name, r.key, r.labels, r.lease,
                                r.parent)
        await self._event(r.namespace, ev.SnapshotCommit(r.key, r.name))

    async def remove(self, r: api.KeyRequest) -> None:
        await asyncio.to_thread(self.store.remove, r.namespace, r.snapshotter, r.key)
        await self._event(r.namespace, ev.SnapshotRemove(r.key))

    async def stat(self, r: api.KeyRequest) -> api.Info:
        return await asyncio.to_thread(self.store.stat, r.namespace, r.snapshotter, r.key)

    async def update(self, r: api.UpdateRequest) -> api.Info:
        return await asyncio.to_thread(self.store.update, r.namespace, r.snapshotter, r.info, r.paths)

    async def list(self, r: api.ListRequest) -> list[api.Info]:
        return await asyncio.to_thread(self.store.list, r.namespace, r.snapshotter, r.filters)

    async def usage(self, r: api.KeyRequest) -> api.Usage:
        return await asyncio.to_thread(self.store.usage, r.namespace, r.snapshotter, r.key)

    async def cleanup(self, r: api.SnapshotterRequest) -> None:
        await asyncio.to_thread(self.store.cleanup, r.snapshotter)

    async def namespace_held(self, r: api.NamespaceRequest) -> list[str]:
        return await asyncio.to_thread(self.store.namespace_held, r.namespace)

    async def apply(self, r: api.ApplyRequest) -> api.Descriptor:
        return await self.differ.apply(r.namespace, r.diff, r.mounts, r.detached)

    async def apply_ahead(self, r: api.AheadRequest) -> None:
        self.differ.apply_ahead(r.namespace, r.digest)

    async def diff(self, r: api.DiffRequest) -> api.Descriptor:
        return await self.differ.diff(r.namespace, r.left, r.right, r.media_type, r.ref, r.labels, r.lease)

    async def start(self) -> None:
        await self.bus.serve_routes(api.stem(self.cfg.prefix, self.cfg.host), [
            (api.PREPARE, self.prepare), (api.VIEW, self.view), (api.MOUNTS, self.mounts),
            (api.COMMIT, self.commit), (api.REMOVE, self.remove), (api.STAT, self.stat),
            (api.UPDATE, self.update), (api.LIST, self.list), (api.USAGE, self.usage),
            (api.CLEANUP, self.cleanup), (api.NAMESPACE_HELD, self.namespace_held),
            (api.APPLY, self.apply), (api.DIFF, self.diff), (api.APPLY_AHEAD, self.apply_ahead),
        ], label="snapshots.")
