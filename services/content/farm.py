"""The content service on a farm (docs/farm.md): one store whose bytes live on the hosts.

Each instance says every second that its host is up (``content.beat``) and keeps what it
hears. An ingest lives on one host, placed apart from its writer's own (a host lost
mid-fetch leaves its bytes to whoever takes the fetch over); a read on a host that holds no
copy fetches one first from a host that does, verified before it is kept; a written blob is
copied to a second host before its commit is answered; a lost host's copies are made again
elsewhere, and what a host keeps of other hosts' blobs is bounded (least recently used go).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, TypeVar

from flotilla.libs.api import content_farm as cf
from flotilla.libs.api.content import CHUNK, ListRequest, RefRequest, Status, WriterOpen, WriterSession, windowed
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import DataLoss, FlotillaError, InstanceGone, NotFound, Unavailable
from flotilla.libs.routes import Route
from flotilla.libs.wire import from_wire

from . import bulk
from .copies import BlobCopies, Copies, rank
from .store import ContentStore

log = logging.getLogger("flotilla.content.farm")
R = TypeVar("R")
MAINTAIN_EVERY = 5.0   # seconds between looks for blobs held by too few hosts, and for eviction
GATHER_WAIT = 3.0      # seconds a listing waits for another host's part
HEAR_OTHERS = 0.3      # seconds a starting instance listens for the hosts up before it serves


def _append(fd: int, hasher: "hashlib._Hash", data: bytes, at: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n
    hasher.update(data)


class Farm:
    def __init__(self, bus: Bus, cfg: Config, store: ContentStore) -> None:
        self.bus, self.cfg, self.store = bus, cfg, store
        self.copies = Copies(store)
        self.host, self.prefix = store.host, cfg.prefix
        self.heard: dict[str, float] = {}     # host -> when its last beat came (monotonic)
        self.started = time.monotonic()
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.bulk: bulk.BulkServer | None = None
        self._short: set[str] = set()          # blobs short of copies at the last look

    # -- who is up -----------------------------------------------------------------------

    def live(self) -> list[str]:
        """Hosts a call may go to now."""
        now = time.monotonic()
        return sorted({self.host, *(h for h, t in self.heard.items() if now - t < cf.LIVE_WITHIN)})

    def present(self, host: str) -> bool:
        """``host`` is not lost for good: its copies still count (a host unheard since this
        instance started gets the same time to say so)."""
        return host == self.host or \
            time.monotonic() - self.heard.get(host, self.started) < self.cfg.host_lost_after

    async def _on_beat(self, data: Any) -> None:
        beat = from_wire(cf.HostBeat, data)
        if beat.host == self.host:
            return
        now = time.monotonic()
        new = now - self.heard.get(beat.host, -cf.LIVE_WITHIN) >= cf.LIVE_WITHIN
        self.heard[beat.host] = now
        if new:  # a host (re)starting learns at once who is up
            await self._say_up()

    async def _say_up(self) -> None:
        with contextlib.suppress(FlotillaError):
            await self.bus.publish(cf.notice_subject(self.prefix, cf.BEAT), cf.HostBeat(self.host, self.store.instance))

    async def _on_gone(self, data: Any) -> None:
        await asyncio.to_thread(self.copies.forget, from_wire(cf.Blob, data).digest)

    async def _call(self, host: str, route: Route[Any, R], request: Any, timeout: float | None = None) -> R:
        """Another host's instances; InstanceGone at once if none answers there."""
        data = await self.bus.request(cf.host_subject(self.prefix, host, route), request,
                                      timeout=timeout or route.timeout, idempotent=route.idempotent,
                                      instance_bound=True)
        return route.decode_reply(data)

    # -- serving ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.subscribe(cf.notice_subject(self.prefix, cf.BEAT), self._on_beat)
        await self.bus.subscribe(cf.notice_subject(self.prefix, cf.GONE), self._on_gone)
        await self.bus.serve_routes(cf.host_stem(self.prefix, self.host), [
            (cf.COPY_READ, self.copy_read), (cf.COPY_OPEN, self.copy_open), (cf.COPY_TAKE, self.copy_take),
            (cf.WRITER_OPEN, self.open_here), (cf.STATUS, self.status_here), (cf.ABORT, self.abort_here),
            (cf.LIST_STATUSES, self.statuses_here),
        ], label="content.p.")
        await asyncio.to_thread(self.copies.reconcile)
        if self.cfg.content_peer_listen:
            self.bulk = await asyncio.to_thread(bulk.BulkServer, self.cfg.content_peer_listen, self._right_copy)
        self._tasks = [asyncio.create_task(self._beat()), asyncio.create_task(self._maintain())]
        await asyncio.sleep(HEAR_OTHERS)  # the others answer the first beat at once

    async def stop(self) -> None:
        if self.bulk is not None:
            self.bulk.close()
        for task in [*self._tasks, *self._fetches.values()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _beat(self) -> None:
        while True:
            await self._say_up()
            await asyncio.sleep(cf.BEAT_EVERY)

    async def copy_read(self, r: cf.CopyRead) -> bytes:
        return await asyncio.to_thread(self.copies.read, r.digest, r.offset, min(r.size, CHUNK))

    async def copy_open(self, r: cf.Blob) -> cf.CopyTicket:
        if self.bulk is None:
            raise Unavailable(f"host {self.host} serves no copy socket: unavailable")
        if not await asyncio.to_thread(self.copies.check, r.digest, True):
            raise NotFound(f"content {r.digest}: no right copy on host {self.host}: not found")
        return cf.CopyTicket(self.bulk.ticket(r.digest), self.bulk.address)

    def _right_copy(self, digest: str) -> Path | None:
        """For the socket's threads: this host's copy of ``digest`` if it is right."""
        return self.store.blob_path(digest) if self.copies.check(digest) else None

    async def copy_take(self, r: cf.Blob) -> None:
        await self.ensure_local(r.digest, "asked to hold one")

    async def open_here(self, r: WriterOpen) -> WriterSession:
        return await asyncio.to_thread(self.store.open_writer, r)

    async def status_here(self, r: RefRequest) -> Status:
        return await asyncio.to_thread(self.store.status, r.namespace, r.ref)

    async def abort_here(self, r: RefRequest) -> None:
        await asyncio.to_thread(self.store.abort, r.namespace, r.ref)
        await asyncio.to_thread(self.copies.unplace, r.namespace, r.ref)

    async def statuses_here(self, r: ListRequest) -> list[Status]:
        return await asyncio.to_thread(self.store.list_statuses, r.namespace, r.filters)

    # -- ingests: on their placed host -----------------------------------------------------

    async def open_writer(self, r: WriterOpen) -> WriterSession:
        r = dataclasses.replace(r, host=r.host or self.host)
        for _ in range(3):
            host = await asyncio.to_thread(self.copies.place, r.namespace, r.ref, self.live(), self.host)
            if host == self.host:
                return await self.open_here(r)
            try:
                return await self._call(host, cf.WRITER_OPEN, r)
            except InstanceGone:
                self.heard.pop(host, None)  # it went since its last beat: placed again
        raise Unavailable(f"ref {r.ref}: no host takes the ingest: unavailable")

    def orphaned(self) -> list[str]:
        """Sessions whose writer's host is lost: their refs are free at once for another
        host to take the ingest over (not after the idle timeout)."""
        live = self.live()
        return [sid for sid, s in list(self.store.sessions.items()) if s.caller and s.caller not in live]

    async def _at_placed(self, namespace: str, ref: str) -> str:
        host = await asyncio.to_thread(self.copies.placed, namespace, ref)
        return host if host != self.host and host in self.live() else ""

    async def status(self, r: RefRequest) -> Status:
        host = await self._at_placed(r.namespace, r.ref)
        return await (self._call(host, cf.STATUS, r) if host else self.status_here(r))

    async def abort(self, r: RefRequest) -> None:
        host = await self._at_placed(r.namespace, r.ref)
        await (self._call(host, cf.ABORT, r) if host else self.abort_here(r))

    async def list_statuses(self, r: ListRequest) -> list[Status]:
        """Every host's ingests (a ref is on one host at a time; the newest wins a tie)."""
        others = [h for h in self.live() if h != self.host]
        parts = [await self.statuses_here(r), *await asyncio.gather(*(
            self._call(h, cf.LIST_STATUSES, r, timeout=GATHER_WAIT) for h in others), return_exceptions=True)]
        found: dict[str, Status] = {}
        for part in parts:
            if isinstance(part, BaseException):
                continue  # a host gone meanwhile: its ingests are not reachable anyway
            for st in part:
                if st.ref not in found or st.updated_at > found[st.ref].updated_at:
                    found[st.ref] = st
        return [found[ref] for ref in sorted(found)]

    async def committed(self, namespace: str, ref: str, digest: str) -> None:
        """The ingest ``ref`` ended (committed or not): its place goes; a blob that must be
        on more hosts is copied there before the commit is answered."""
        await asyncio.to_thread(self.copies.unplace, namespace, ref)
        if digest:
            await self.replicate(digest)

    async def replicate(self, digest: str) -> None:
        blob = await asyncio.to_thread(self.copies.blob, digest)
        if blob is None or blob.wanted < 2:
            return
        live = self.live()
        need = min(blob.wanted, len(live)) - sum(1 for h in blob.holders if h in live)
        for host in sorted((h for h in live if h not in blob.holders), key=lambda h: rank(h, digest), reverse=True):
            if need <= 0:
                return
            try:
                await self._call(host, cf.COPY_TAKE, cf.Blob(digest))
                need -= 1
            except FlotillaError as exc:
                log.warning("host %s took no copy of %s: %s", host, digest, exc.message)
        if need > 0:
            log.warning("%s is held by fewer hosts than it wants (%d): the repair goes on", digest, blob.wanted)

    # -- reads: a right copy here first ------------------------------------------------

    async def ensure_local(self, digest: str, why: str = "read here") -> None:
        """This host holds a right copy of ``digest`` when this returns."""
        if await asyncio.to_thread(self.copies.check, digest, True):
            return
        task = self._fetches.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(digest, why))
            self._fetches[digest] = task
            task.add_done_callback(lambda _t: self._fetches.pop(digest, None))
        await asyncio.shield(task)

    async def _fetch(self, digest: str, why: str) -> None:
        blob = await asyncio.to_thread(self.copies.blob, digest)
        if blob is None:
            raise NotFound(f"content digest {digest}: not found")
        sources = await self._sources(blob)
        failures = []
        for host in sources:
            try:
                await self._pull(host, blob, why)
                return
            except FlotillaError as exc:
                failures.append(f"{host}: {exc.message}")
        held = ", ".join(blob.holders) or "no host"
        raise Unavailable(f"content {digest}: no live host has a right copy (held by {held}"
                          f"{'; ' if failures else ''}{'; '.join(failures)}): unavailable")

    async def _sources(self, blob: BlobCopies) -> list[str]:
        """The live hosts holding ``blob``, best first; while none is live but one is not
        lost yet (this instance just started, or that host is coming back), its beat is
        waited for a little."""
        deadline = time.monotonic() + cf.LIVE_WITHIN
        while True:
            live = self.live()
            sources = [h for h in blob.holders if h != self.host and h in live]
            if sources or time.monotonic() > deadline \
                    or not any(self.present(h) for h in blob.holders if h != self.host):
                return sorted(sources, key=lambda h: rank(h, blob.digest), reverse=True)
            await asyncio.sleep(0.2)

    async def _pull(self, source: str, blob: BlobCopies, why: str) -> None:
        """``blob``'s bytes from ``source``, kept here only if they match: over its socket
        when it has one, else as chunks over the bus."""
        tmp = self.copies.incoming_file()
        try:
            try:
                ticket = await self._call(source, cf.COPY_OPEN, cf.Blob(blob.digest))
            except Unavailable:
                ticket = None  # that host serves no socket
            how = "socket"
            if ticket is not None:
                try:
                    await asyncio.to_thread(bulk.receive, ticket.address, ticket.token, blob.digest, blob.size, tmp)
                except (Unavailable, DataLoss) as exc:
                    log.warning("socket copy from %s failed (%s): over the bus instead", source, exc.message)
                    ticket = None
            if ticket is None:
                await self._pull_chunks(source, blob, tmp)
                how = "bus"
            await asyncio.to_thread(self.copies.admit, tmp, blob.digest, blob.size)
            log.info("copied %s (%d bytes) from %s over its %s (%s)", blob.digest, blob.size, source, how, why)
        finally:
            tmp.unlink(missing_ok=True)

    async def _pull_chunks(self, source: str, blob: BlobCopies, tmp: Path) -> None:
        """Several chunks in flight, hashed as they come."""
        fd = await asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        hasher = hashlib.new(blob.digest.split(":", 1)[0])
        got = 0
        try:
            async for piece in windowed(lambda at, n: self._call(source, cf.COPY_READ, cf.CopyRead(blob.digest, at, n)),
                                        0, blob.size):
                if not piece:
                    raise DataLoss(f"copy of {blob.digest} on {source} ends at {got} of {blob.size} bytes: data loss")
                await asyncio.to_thread(_append, fd, hasher, piece, got)
                got += len(piece)
            if f"{hasher.name}:{hasher.hexdigest()}" != blob.digest:
                raise DataLoss(f"copy of {blob.digest} from {source} does not match its digest: data loss")
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)

    # -- upkeep ----------------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTAIN_EVERY)
            try:
                await self.repair()
                for digest in await asyncio.to_thread(self.copies.evictable, self.cfg.content_cache, self.present):
                    await asyncio.to_thread(self.copies.drop, digest)
                    log.info("evicted this host's copy of %s", digest)
            except Exception:  # the next turn tries again
                log.exception("content upkeep failed")

    async def repair(self) -> None:
        """Copy here every blob held by fewer present hosts than it wants, of which this
        host is the first choice among the live hosts that hold none."""
        if time.monotonic() - self.started < self.cfg.host_lost_after:
            return  # which hosts are lost is not known yet
        live = self.live()
        present = [h for h in (*self.heard, self.host) if self.present(h)]
        short = await asyncio.to_thread(self.copies.blobs, present)
        # short on two looks in a row: a commit copying its blob to a second host is not
        # raced by a third
        seen, self._short = self._short, {b.digest for b in short}
        for blob in (b for b in short if b.digest in seen):
            holding = [h for h in blob.holders if self.present(h)]
            if self.host in blob.holders or not set(holding) & set(live) \
                    or len(holding) >= min(blob.wanted, len(live)):
                continue
            if max((h for h in live if h not in blob.holders), key=lambda h: rank(h, blob.digest)) != self.host:
                continue
            try:
                await self.ensure_local(blob.digest, "too few hosts hold it")
                log.info("made a copy of %s again (held by %s)", blob.digest, ", ".join(holding))
            except FlotillaError as exc:
                log.warning("could not copy %s again: %s", blob.digest, exc.message)
