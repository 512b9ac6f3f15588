"""containerd's ttrpc endpoint (``<socket>.ttrpc``): ttrpc's wire protocol without I/O
(protocol.py), a server over asyncio UNIX sockets (server.py), the services it serves
(events.py) and a small client (client.py). See docs/ttrpc.md."""

from .client import Client, TTRPCError
from .events import EVENTS_SERVICE, register_events
from .server import Server, same_user, unary_method

__all__ = ["EVENTS_SERVICE", "Client", "Server", "TTRPCError", "register_events", "same_user", "unary_method"]
