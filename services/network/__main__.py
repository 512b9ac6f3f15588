"""``python -m flotilla.services.network``: run this host's network service."""

from __future__ import annotations

import asyncio
import logging

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from .engine import Engine
from .server import NetworkServer

log = logging.getLogger("flotilla.network")


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    engine = Engine(cfg.root, cfg.state)
    # before serving: what a killed instance left half-made is undone first, so a call sent
    # again after its restart starts from a clean slate
    undone = await asyncio.to_thread(engine.recover)
    log.info("network: %d interface(s) undone at start; plugins from %s", undone, ":".join(engine.plugins.path))
    server = NetworkServer(bus, cfg, engine)
    await server.start()
    return server.stop


if __name__ == "__main__":
    run("network", setup, host_local=True)
