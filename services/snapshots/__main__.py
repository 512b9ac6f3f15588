"""``python -m flotilla.services.snapshots``: run this host's snapshots and diff service."""

from __future__ import annotations

import asyncio

from flotilla.libs.api.content import ContentClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from .ahead import AheadLayers
from .diffs import Differ, clear_scratch
from .server import SnapshotsServer
from .store import SnapshotStore


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    scratch = cfg.state / "snapshots"
    await asyncio.to_thread(clear_scratch, scratch)  # mounts a killed instance left behind
    store = await asyncio.to_thread(SnapshotStore.open, cfg.root / "snapshots")
    # beside the snapshots (a layer applied ahead is renamed into one), never a snapshotter's name
    ahead = AheadLayers(cfg.root / "snapshots" / ".ahead", cfg.apply_ahead_ttl)
    await asyncio.to_thread(ahead.clear)  # what a stopped instance left
    differ = Differ(ContentClient(bus, cfg.prefix, host=cfg.host), scratch,
                    ahead=ahead if cfg.apply_ahead_ttl > 0 else None)
    await SnapshotsServer(bus, cfg, store, differ).start()
    warming = asyncio.ensure_future(differ.warm())  # serve meanwhile

    async def stop() -> None:
        warming.cancel()
        differ.close()
        await asyncio.to_thread(store.close)  # removals under way finish

    return stop


if __name__ == "__main__":
    run("snapshots", setup, host_local=True)
