"""The gateway's front: what answers its socket from the moment the process has a few
modules (the socket, HTTP/2 and ttrpc framing, gRPC health), before the bus and the servicers
are loaded behind it (``__main__``). A call for any other method waits meanwhile (opening.py).
containerd's Go client gives its first connection about 1 s for the whole handshake; the
whole gateway takes longer than that to import here (docs/gateway.md, "Start")."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from grpc import aio

from flotilla.libs.config import Config

from . import health, listener
from .h2grpc import Server as H2Server
from .opening import Opening
from .ttrpc.server import Server as TTRPCServer

log = logging.getLogger("flotilla.gateway")
MAX_MESSAGE = 16 << 20  # containerd's own limit


@dataclass
class Front:
    grpc: aio.Server | H2Server
    ttrpc: TTRPCServer
    opening: Opening
    stop_accepting: Callable[[], Awaitable[None]] | None = None  # None: not listening yet

    async def listen(self, socket_path: str) -> None:
        """Serve both APIs on the socket a supervisor passed down, or on our own."""
        if isinstance(self.grpc, aio.Server):  # grpcio's server binds its own path (bench only)
            await self.ttrpc.start(socket_path + ".ttrpc", mode=0o660)
            self.grpc.add_insecure_port(f"unix://{socket_path}")
            await self.grpc.start()
            self.stop_accepting = self.ttrpc.stop
            return
        sock = listener.inherited() or listener.bind(socket_path)
        listener.link(socket_path, socket_path + ".ttrpc")  # containerd's ttrpc clients look there
        accepting = await listener.serve(sock, self.grpc.protocol, self.ttrpc.protocol)
        log.info("serving containerd's gRPC and ttrpc APIs on %s (and .ttrpc)", socket_path)
        self.stop_accepting = accepting.close


def new_grpc_server(opening: Opening | None = None) -> aio.Server | H2Server:
    """Our own HTTP/2 server (h2grpc) unless FLOTILLA_GRPC_SERVER=grpcio asks for grpcio's,
    kept to compare the two side by side (bench); that one takes no method once started."""
    if os.environ.get("FLOTILLA_GRPC_SERVER", "h2grpc") == "grpcio":
        return aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                   ("grpc.max_send_message_length", MAX_MESSAGE)])
    return H2Server(max_message=MAX_MESSAGE, opening=opening)


async def open_front(cfg: Config) -> Front:
    """The front, answering the socket (grpcio's server listens once the gateway is built)."""
    opening = Opening()
    front = Front(new_grpc_server(opening), TTRPCServer(opening=opening), opening)
    health.register(front.grpc)
    if isinstance(front.grpc, H2Server):
        await front.listen(cfg.socket_path)
    return front
