"""``python -m flotilla.services.transfer``: run the transfer (server-side pull) service."""

from __future__ import annotations

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup, run

from .server import TransferServer


async def setup(bus: Bus, cfg: Config) -> Cleanup:
    server = TransferServer(bus, cfg)
    await server.start()
    return server.stop


if __name__ == "__main__":
    run("transfer", setup, host_local=True)
