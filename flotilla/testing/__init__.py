"""Helpers shared by the tests and the benchmarks: a private suite, a containerd peer, ctr,
a farm of hosts on network namespaces."""

from .farm import Farm
from .peers import CTR, ContainerdPeer, PrivateSuite, Registry, ctr, nats_server

__all__ = ["CTR", "ContainerdPeer", "Farm", "PrivateSuite", "Registry", "ctr", "nats_server"]
