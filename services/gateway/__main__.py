"""``python -m flotilla.services.gateway``: serve containerd's API on the UNIX socket."""

from __future__ import annotations

import asyncio

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from . import proxy_sockets, ttrpc
from .server import MAX_MESSAGE, build, listen


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    ttrpc_server = ttrpc.Server()
    server = await build(bus, cfg, ttrpc_server)
    # containerds using Flotilla as their content store and snapshotter (docs/integrators.md);
    # before our own socket, so that a bad setting stops the gateway before it serves anything
    stop_proxies = await proxy_sockets.serve(server, bus, cfg, MAX_MESSAGE)
    stop_accepting = await listen(server, ttrpc_server, cfg.socket_path)

    async def stop() -> None:
        await stop_accepting()
        grace = cfg.drain_grace
        await asyncio.gather(ttrpc_server.stop(grace=grace), server.stop(grace=grace), stop_proxies(grace))

    return stop


if __name__ == "__main__":
    run("gateway", setup)
