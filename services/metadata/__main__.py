"""``python -m flotilla.services.metadata``: run the metadata service."""

from __future__ import annotations

import asyncio

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from .server import MetadataServer
from .store import MetadataStore


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    store = await asyncio.to_thread(MetadataStore.open, cfg.database_url("metadata"), cfg.host)
    server = MetadataServer(bus, cfg, store)
    await server.start()

    async def stop() -> None:
        await server.stop()
        await asyncio.to_thread(store.close)

    return stop


if __name__ == "__main__":
    run("metadata", setup)
