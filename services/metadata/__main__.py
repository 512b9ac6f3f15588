"""``python -m flotilla.services.metadata``: run the metadata service."""

from __future__ import annotations

import asyncio

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from .server import MetadataServer
from .store import MetadataStore


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    url = cfg.database_url("metadata")
    if url.startswith("postgresql") and not cfg.host_id:
        # containers are keyed by host: on a shared database an id derived from the hostname
        # (which may change, or repeat across hosts) would hand them to another host
        raise SystemExit("metadata: FLOTILLA_HOST_ID must be set on a host sharing a PostgreSQL database")
    # a container's host is the explicit host id, "" on a single host: a hostname that changes
    # must not make its containers another host's (the collector would sweep their snapshots)
    store = await asyncio.to_thread(MetadataStore.open, url, cfg.host_id)
    server = MetadataServer(bus, cfg, store)
    await server.start()

    async def stop() -> None:
        await server.stop()
        await asyncio.to_thread(store.close)

    return stop


if __name__ == "__main__":
    run("metadata", setup)
