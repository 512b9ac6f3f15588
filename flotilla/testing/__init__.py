"""Helpers shared by the tests and the benchmarks: a private suite, a containerd peer, ctr,
a farm of hosts on network namespaces."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .farm import Farm
    from .peers import CTR, ContainerdPeer, PrivateSuite, Registry, ctr, nats_server, serving

__all__ = ["CTR", "ContainerdPeer", "Farm", "PrivateSuite", "Registry", "ctr", "nats_server", "serving"]
_HOME = {"Farm": ".farm", **{name: ".peers" for name in __all__ if name != "Farm"}}


def __getattr__(name: str) -> Any:
    # imported when first asked for: the containerd stand-in (``-m flotilla.testing.daemon``)
    # must start in a fraction of a second and needs none of these
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name], __name__), name)
