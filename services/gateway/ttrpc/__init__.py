"""containerd's ttrpc endpoint (``<socket>.ttrpc``): ttrpc's wire protocol without I/O
(protocol.py), a server over asyncio UNIX sockets (server.py), the services it serves
(events.py) and a small client (client.py). See docs/ttrpc.md.

Names are loaded when first used (PEP 562): the gateway takes the server alone before it
serves, and the events service, which needs the bus's records, after."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client, TTRPCError
    from .events import EVENTS_SERVICE, register_events
    from .server import Server, same_user, unary_method

_WHERE = {"Client": "client", "TTRPCError": "client", "EVENTS_SERVICE": "events", "register_events": "events",
          "Server": "server", "same_user": "server", "unary_method": "server"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
