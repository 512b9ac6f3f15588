"""``python -m flotilla.services.content``: run the content service."""

from __future__ import annotations

import asyncio

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from .server import ContentServer
from .store import ContentStore


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    if cfg.content_db_url and not cfg.host_id:
        # a farm's copies are recorded by host: a hostname may change, or repeat
        raise SystemExit("content: FLOTILLA_HOST_ID is required with FLOTILLA_CONTENT_DB_URL")
    store = await asyncio.to_thread(ContentStore, cfg.root, "", cfg.host, cfg.content_db_url, cfg.content_copies)
    server = ContentServer(bus, cfg, store)
    await server.start()
    return server.stop


if __name__ == "__main__":
    run("content", setup)
