"""``python -m flotilla.services.gateway``: serve containerd's API on the UNIX socket."""

from __future__ import annotations

import asyncio

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from . import ttrpc
from .server import build, listen, listen_ttrpc


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    ttrpc_server = ttrpc.Server()
    server = await build(bus, cfg, ttrpc_server)
    # ttrpc first: whoever waits for the gRPC socket to answer (flotilla up, the tests) then
    # finds the ttrpc one there too
    await listen_ttrpc(ttrpc_server, cfg.socket_path)
    await listen(server, cfg.socket_path)

    async def stop() -> None:
        await asyncio.gather(ttrpc_server.stop(grace=2), server.stop(grace=2))

    return stop


if __name__ == "__main__":
    run("gateway", setup)
