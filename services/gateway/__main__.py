"""``python -m flotilla.services.gateway``: serve containerd's API on the UNIX socket."""

from __future__ import annotations

import asyncio

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from . import proxy_sockets, ttrpc
from .server import MAX_MESSAGE, build, listen

# seconds a stopping gateway gives the calls it runs; new calls already go to another
# gateway (or wait in the socket's backlog for the next one), so this is what a graceful
# restart costs no client (supervisord's stopwaitsecs is longer)
DRAIN_GRACE = 20.0


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    ttrpc_server = ttrpc.Server()
    server = await build(bus, cfg, ttrpc_server)
    # containerds using Flotilla as their content store and snapshotter (docs/integrators.md);
    # before our own socket, so that a bad setting stops the gateway before it serves anything
    stop_proxies = await proxy_sockets.serve(server, bus, cfg, MAX_MESSAGE)
    stop_accepting = await listen(server, ttrpc_server, cfg.socket_path)

    async def stop() -> None:
        await stop_accepting()
        await asyncio.gather(ttrpc_server.stop(grace=DRAIN_GRACE), server.stop(grace=DRAIN_GRACE),
                             stop_proxies(DRAIN_GRACE))

    return stop


if __name__ == "__main__":
    run("gateway", setup)
