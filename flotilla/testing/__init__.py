"""Helpers shared by the tests and the benchmarks: a private suite, a containerd peer, ctr."""

from .peers import CTR, ContainerdPeer, PrivateSuite, Registry, ctr, nats_server

__all__ = ["CTR", "ContainerdPeer", "PrivateSuite", "Registry", "ctr", "nats_server"]
