"""``python -m flotilla.services.gateway``: serve containerd's API on the UNIX socket.

In two steps, so that a client is answered from the start: the front (front.py) serves the
socket with what few modules it needs, then the rest of the gateway, the bus and every
servicer, is imported in a thread behind it and built (server.py); calls that come meanwhile
wait for it (docs/gateway.md, "Start")."""

from __future__ import annotations

import asyncio
import importlib

from flotilla.libs.config import Config
from flotilla.libs.process import run_process

from .front import open_front


async def main(cfg: Config) -> None:
    front = await open_front(cfg)
    try:
        server = await asyncio.to_thread(importlib.import_module, f"{__package__}.server")
        await server.serve(cfg, front)
    except BaseException as exc:  # calls held meanwhile are told, not left waiting
        front.opening.failed(str(exc) or type(exc).__name__)
        raise


if __name__ == "__main__":
    run_process("gateway", main)
