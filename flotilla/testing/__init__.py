"""Helpers shared by the tests and the benchmarks: a private suite, a containerd peer, ctr."""

from .peers import CTR, ContainerdPeer, PrivateSuite, ctr, nats_server

__all__ = ["CTR", "ContainerdPeer", "PrivateSuite", "ctr", "nats_server"]
