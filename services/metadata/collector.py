"""Garbage collection over the bus: mark from the store's records, sweep through the
content and snapshots services.

A store that does not answer its ping is not part of this deployment: it is skipped, never
an error. Writes to the metadata store wait while a collection marks and sweeps (as
containerd's GC holds its database lock), so nothing referenced mid-collection is swept:
in this process at the WriteGate, then in every process on the store (common.Collecting):
with SQLite, the instances of one host, at an flock on the database's gc-lock file; with
PostgreSQL, every host of the farm, at the database's advisory lock, which also lets one
collection run at a time.

Snapshots are this host's (listed and swept through its own snapshots service); content is
the farm's, so every host's containers hold content, only this host's hold snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.snapshots import SNAPSHOTTERS, SnapshotsClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import FlotillaError, NotFound
from flotilla.libs.subjects import local, shared

from .api import GCStats
from .common import Collecting
from .gcmark import Blob, Snap, mark, removal_order
from .store import MetadataStore

log = logging.getLogger("flotilla.metadata.gc")
_PING_TIMEOUT = 0.5
DELAY = 0.2          # a burst of deletes is collected once
PERIOD = 300.0       # and expired leases at least this often
PAUSE_SHARE = 0.02   # scheduled collections take at most this share of the time (containerd's
MAX_SPACING = 1.0    # pause_threshold), but follow a delete within this many seconds


class WriteGate:
    """Many writers at once, or one collection alone."""

    def __init__(self) -> None:
        self._writers = 0
        self._collecting = False
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._collecting)
            self._writers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._writers -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._collecting)
            self._collecting = True
            await self._cond.wait_for(lambda: self._writers == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._collecting = False
                self._cond.notify_all()


@asynccontextmanager
async def farm_exclusive(store: MetadataStore) -> AsyncIterator[Collecting]:
    """The farm's collection lock, waited for in a thread; given back even when the waiter
    is cancelled after the thread got it."""
    acquiring = asyncio.ensure_future(asyncio.to_thread(store.gc_acquire))
    try:
        held = await asyncio.shield(acquiring)
    except asyncio.CancelledError:
        def give_back(done: asyncio.Future[Collecting]) -> None:
            if not done.cancelled() and done.exception() is None:  # a database call: not on the loop
                asyncio.get_running_loop().run_in_executor(None, store.gc_release, done.result())
        acquiring.add_done_callback(give_back)
        raise
    try:
        yield held
    finally:
        await asyncio.shield(asyncio.to_thread(store.gc_release, held))


class Collector:
    def __init__(self, bus: Bus, cfg: Config, store: MetadataStore) -> None:
        self.bus, self.cfg, self.store = bus, cfg, store
        self.content = ContentClient(bus, cfg.prefix)
        self.snapshots = SnapshotsClient(bus, cfg.prefix, cfg.host)
        self.gate = WriteGate()
        self._run_lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_run = 0.0
        self._last_end = 0.0   # when the last collection ended, and how long it took
        self._last_took = 0.0

    async def _up(self, subject: str) -> bool:
        try:
            await self.bus.request(subject, None, timeout=_PING_TIMEOUT)
            return True
        except FlotillaError:
            return False

    async def content_up(self) -> bool:
        return await self._up(shared(self.cfg.prefix, "content", "ping"))

    async def snapshots_up(self) -> bool:
        return await self._up(local(self.cfg.prefix, "snapshots", self.cfg.host, "ping"))

    def schedule(self) -> None:
        """Something was deleted: collect soon."""
        self._dirty.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), PERIOD)
            except asyncio.TimeoutError:
                pass
            spacing = min(MAX_SPACING, self._last_took / PAUSE_SHARE)
            await asyncio.sleep(max(DELAY, self._last_end + spacing - time.monotonic()))
            if not self._dirty.is_set() and self._last_run > time.monotonic() - PERIOD:
                continue  # a synchronous collection already covered those deletes
            try:
                await self.collect()
            except Exception:  # the next round tries again
                log.exception("garbage collection failed")

    async def collect(self) -> GCStats:
        """One whole collection; callers asking for sync wait for a fresh one."""
        async with self._run_lock:
            self._dirty.clear()  # this collection covers every delete made before it
            self._last_run = started = time.monotonic()
            stats = GCStats()
            content_up, snaps_up = await asyncio.gather(self.content_up(), self.snapshots_up())
            if not content_up:
                stats.skipped.append("content")
            if not snaps_up:
                stats.skipped.append("snapshots")
            # this process' writers first (they wait here, not in threads), then the farm's
            async with self.gate.exclusive(), farm_exclusive(self.store) as held:
                for ns in await asyncio.to_thread(self.store.gc_namespaces):
                    await self._collect_namespace(ns, content_up, snaps_up, stats, held)
            self._last_end = time.monotonic()
            self._last_took = self._last_end - started
            log.info("gc: %d blobs, %d snapshots, %d leases removed in %.3fs%s", stats.content_removed,
                     stats.snapshots_removed, stats.leases_expired, self._last_took,
                     f" (skipped {', '.join(stats.skipped)})" if stats.skipped else "")
            return stats

    async def _collect_namespace(self, ns: str, content_up: bool, snaps_up: bool, stats: GCStats,
                                 held: Collecting) -> None:
        # a synchronous delete waits for this: ask the stores and the database at once
        async def blobs_of() -> list[Blob] | None:
            if not content_up:
                return None
            try:
                return [Blob(i.digest, i.labels, i.leases) for i in await self.content.list(ns)]
            except FlotillaError as exc:
                log.warning("gc: content of %s not listed: %s", ns, exc.message)
                return None

        async def snaps_of() -> list[Snap] | None:
            async def one(sn: str) -> list[Snap] | None:
                try:
                    return [Snap(sn, i.name, i.parent, i.labels, i.leases) for i in await self.snapshots.list(ns, sn)]
                except FlotillaError as exc:
                    log.warning("gc: %s snapshots of %s not listed: %s", sn, ns, exc.message)
                    return None
            per = await asyncio.gather(*(one(sn) for sn in (SNAPSHOTTERS if snaps_up else ())))
            return None if None in per else [snap for snaps in per if snaps for snap in snaps]

        listed_blobs, listed_snaps, records = await asyncio.gather(
            blobs_of(), snaps_of(), asyncio.to_thread(self.store.gc_records, ns))
        blobs, snaps = listed_blobs or [], listed_snaps or []
        keep_content, keep_snaps = mark(records, blobs, snaps)
        # what one store holds may be reachable only through the other's labels (an image's
        # layers: through its config blob's): with either not listed (not deployed, or down:
        # a ping does not tell them apart), the other is not swept on this mark, or a killed
        # content service would cost a running suite its images' snapshots
        sweep_content = listed_blobs is not None and listed_snaps is not None
        sweep_snaps = listed_blobs is not None
        expired = [lease.id for lease in records.leases if lease.expired]
        if expired:
            await asyncio.to_thread(self.store.remove_leases, ns, expired, held)
        stats.leases_expired += len(expired)
        if sweep_content:
            for blob in blobs:
                if blob.digest not in keep_content:
                    try:
                        await self.content.delete(ns, blob.digest, leases_seen=list(blob.leases))
                        stats.content_removed += 1
                    except NotFound:
                        pass
                    except FlotillaError as exc:
                        log.warning("gc: blob %s in %s not removed: %s", blob.digest, ns, exc.message)
        for snap in removal_order(snaps, keep_snaps) if sweep_snaps else ():
            try:
                await self.snapshots.remove(ns, snap.snapshotter, snap.name)
                stats.snapshots_removed += 1
            except NotFound:
                pass
            except FlotillaError as exc:
                log.warning("gc: snapshot %s in %s not removed: %s", snap.key, ns, exc.message)
