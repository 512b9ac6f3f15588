"""``python -m flotilla.services.runtime``: run this host's runtime service."""

from __future__ import annotations

import asyncio
import logging

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from . import supervisor
from .engine import Engine
from .server import RuntimeServer, publisher

log = logging.getLogger("flotilla.runtime")


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    shim = await asyncio.to_thread(supervisor.locate)
    engine = Engine(cfg.state, publisher(bus, cfg), shim)
    # re-adopt before serving, so no call sees a task as missing while it is being adopted
    adopted = await engine.recover()
    log.info("re-adopted %d task(s); supervisor %s", adopted, shim)
    await RuntimeServer(bus, cfg, engine).start_serving()

    async def stop() -> None:
        await engine.close()  # containers and their supervisors keep running
    return stop


if __name__ == "__main__":
    run("runtime", setup, host_local=True)
