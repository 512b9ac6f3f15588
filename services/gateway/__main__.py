"""``python -m flotilla.services.gateway``: serve containerd's API on the UNIX socket."""

from __future__ import annotations

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from .server import build, listen


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    server = await build(bus, cfg)
    await listen(server, cfg.socket_path)

    async def stop() -> None:
        await server.stop(grace=2)

    return stop


if __name__ == "__main__":
    run("gateway", setup)
