"""The content service's NATS binding: shared subjects for any instance, instance subjects
for the write sessions this instance holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from flotilla.libs import events
from flotilla.libs.api import content_farm as cf
from flotilla.libs.api import events as ev
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config

from . import api
from .farm import Farm
from .store import ContentStore

log = logging.getLogger("flotilla.content")
# a session nobody touched for this long lost its caller (writers beat every 5 s): its ref
# is free again soon, so another host can take an ingest over from a host that was lost
IDLE = 20.0
ORDER_WAIT = 60.0    # how long a chunk that arrived early waits for its predecessors


class ContentServer:
    def __init__(self, bus: Bus, cfg: Config, store: ContentStore) -> None:
        self.bus, self.cfg, self.store = bus, cfg, store
        self.order: dict[str, asyncio.Condition] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # a farm's store: ingests, reads and commits go through its hosts (farm.py)
        self.farm = Farm(bus, cfg, store) if store.farm else None

    # -- shared methods ----------------------------------------------------------------

    async def info(self, r: api.DigestRequest) -> api.Info:
        return await asyncio.to_thread(self.store.info, r.namespace, r.digest)

    async def list(self, r: api.ListRequest) -> list[api.Info]:
        return await asyncio.to_thread(self.store.list, r.namespace, r.filters)

    async def update(self, r: api.UpdateRequest) -> api.Info:
        info = await asyncio.to_thread(self.store.update, r.namespace, r.info, r.paths)
        await self.bus.publish(api.subject(self.cfg.prefix, api.CHANGED),
                               api.ContentChanged(r.namespace, info.digest, info.updated_at))
        return info

    async def delete(self, r: api.DeleteRequest) -> None:
        gone = await asyncio.to_thread(self.store.delete, r.namespace, r.digest, r.leases_seen)
        if gone and self.farm is not None:
            await self.bus.publish(cf.notice_subject(self.cfg.prefix, cf.GONE), cf.Blob(r.digest))
        await events.publish(self.bus, self.cfg.prefix, r.namespace, ev.ContentDelete(r.digest))

    async def _here(self, namespace: str, digest: str) -> None:
        """On a farm, a right copy of the namespace's blob on this host (fetched if need be;
        the read that follows looks its record up anyway, so that is done here only before
        a fetch: NotFound, not a copy of another namespace's blob)."""
        if self.farm is not None and not await asyncio.to_thread(self.farm.copies.check, digest, True):
            await asyncio.to_thread(self.store.info, namespace, digest)
            await self.farm.ensure_local(digest)

    async def read(self, r: api.ReadRequest) -> bytes:
        await self._here(r.namespace, r.digest)
        return await asyncio.to_thread(self.store.read, r.namespace, r.digest, r.offset, r.size)

    async def local_path(self, r: api.DigestRequest) -> api.LocalFile:
        await self._here(r.namespace, r.digest)
        return await asyncio.to_thread(self.store.local_file, r.namespace, r.digest)

    async def status(self, r: api.RefRequest) -> api.Status:
        if self.farm is not None:
            return await self.farm.status(r)
        return await asyncio.to_thread(self.store.status, r.namespace, r.ref)

    async def list_statuses(self, r: api.ListRequest) -> list[api.Status]:
        if self.farm is not None:
            return await self.farm.list_statuses(r)
        return await asyncio.to_thread(self.store.list_statuses, r.namespace, r.filters)

    async def abort(self, r: api.RefRequest) -> None:
        if self.farm is not None:
            return await self.farm.abort(r)
        await asyncio.to_thread(self.store.abort, r.namespace, r.ref)

    async def namespace_held(self, r: api.NamespaceRequest) -> bool:
        return await asyncio.to_thread(self.store.namespace_held, r.namespace)

    async def namespaces(self, _r: None) -> list[str]:
        return await asyncio.to_thread(self.store.namespaces)

    async def release_lease(self, r: api.LeaseRequest) -> int:
        return await asyncio.to_thread(self.store.release_lease, r.namespace, r.lease)

    async def writer_open(self, r: api.WriterOpen) -> api.WriterSession:
        if self.farm is not None:
            return await self.farm.open_writer(r)
        return await asyncio.to_thread(self.store.open_writer, r)

    # -- session methods (this instance only) ------------------------------------------

    async def w_status(self, r: api.SessionRequest) -> api.WriterSession:
        return await asyncio.to_thread(self.store.w_status, r.session)

    async def w_write(self, r: api.ChunkWrite) -> int:
        session = self.store.session(r.session)
        # chunks arrive several at a time; each waits for the one before it
        cond = self.order.setdefault(r.session, asyncio.Condition())
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(
                    lambda: session.offset >= r.offset or r.session not in self.store.sessions), ORDER_WAIT)
            except TimeoutError:
                pass  # the chunks before it never came: the store refuses it at its offset (OutOfRange)
        try:
            return await asyncio.to_thread(self.store.w_write, r.session, r.offset, r.data)
        finally:
            async with cond:
                cond.notify_all()

    async def w_sync(self, r: api.SyncRequest) -> int:
        if r.offset == 0:  # a writer's keep-alive: touch the session, take no lock or thread
            return self.store.session(r.session).offset
        return await asyncio.to_thread(self.store.w_sync, r.session, r.offset)

    async def w_truncate(self, r: api.SessionRequest) -> int:
        return await asyncio.to_thread(self.store.w_truncate, r.session)

    async def w_commit(self, r: api.CommitRequest) -> api.Info:
        session = self.store.sessions.get(r.session)
        digest = ""
        try:
            info = await asyncio.to_thread(self.store.w_commit, r.session, r.size, r.expected, r.labels)
            digest = info.digest
        finally:
            await self._forget(r.session)
            if self.farm is not None and session is not None and r.session not in self.store.sessions:
                await self.farm.committed(session.namespace, session.ref, digest)
        return info

    async def w_close(self, r: api.SessionRequest) -> None:
        await asyncio.to_thread(self.store.w_close, r.session, r.updated_at)
        await self._forget(r.session)

    async def _forget(self, sid: str) -> None:
        """The session is over: chunks still waiting for their turn fail now, not later."""
        cond = self.order.pop(sid, None)
        if cond is not None:
            async with cond:
                cond.notify_all()

    async def _sweep(self) -> None:
        while True:
            # a farm knows a writer's host lost within seconds: its sessions end then
            await asyncio.sleep(IDLE / 4 if self.farm is None else 1.0)
            for sid in await asyncio.to_thread(self.store.expire, IDLE):
                await self._forget(sid)
                log.info("closed idle write session %s", sid)
            for sid in self.farm.orphaned() if self.farm is not None else ():
                await asyncio.to_thread(self.store.w_close, sid)
                await self._forget(sid)
                log.info("closed write session %s: its writer's host is lost", sid)

    async def start(self) -> None:
        if self.farm is not None:  # knows the hosts up before it takes a call
            await self.farm.start()
        await self.bus.serve_shared(api.stem(self.cfg.prefix), [
            (api.INFO, self.info), (api.LIST, self.list), (api.UPDATE, self.update), (api.DELETE, self.delete),
            (api.READ, self.read), (api.LOCAL_PATH, self.local_path), (api.STATUS, self.status),
            (api.LIST_STATUSES, self.list_statuses), (api.ABORT, self.abort),
            (api.NAMESPACE_HELD, self.namespace_held), (api.RELEASE_LEASE, self.release_lease),
            (api.NAMESPACES, self.namespaces), (api.WRITER_OPEN, self.writer_open),
        ], label="content.")
        # no queue group: every instance gets its own sessions' calls
        await self.bus.serve_routes(api.instance_stem(self.cfg.prefix, self.store.instance), [
            (api.W_STATUS, self.w_status), (api.W_WRITE, self.w_write), (api.W_SYNC, self.w_sync),
            (api.W_TRUNCATE, self.w_truncate), (api.W_COMMIT, self.w_commit), (api.W_CLOSE, self.w_close),
        ], queue="", label="content.")
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self.farm is not None:
            await self.farm.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await asyncio.to_thread(self.store.close)
