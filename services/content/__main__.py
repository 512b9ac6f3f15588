"""``python -m flotilla.services.content``: run the content service."""

from __future__ import annotations

import asyncio

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from .server import ContentServer
from .store import ContentStore


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    store = await asyncio.to_thread(ContentStore, cfg.root, "", cfg.host)
    server = ContentServer(bus, cfg, store)
    await server.start()
    return server.stop


if __name__ == "__main__":
    run("content", setup)
