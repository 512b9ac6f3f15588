"""``python -m flotilla.services.metadata``: run the metadata service."""

from __future__ import annotations

import asyncio

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import run

from .server import MetadataServer
from .store import MetadataStore


async def setup(bus: Bus, cfg: Config) -> None:
    store = await asyncio.to_thread(MetadataStore.open, cfg.database_url("metadata"))
    await MetadataServer(bus, cfg, store).start()


if __name__ == "__main__":
    run("metadata", setup)
