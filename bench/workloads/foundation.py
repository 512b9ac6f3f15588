"""Issue 2's figures: round trips, idle memory, start-up time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from flotilla._api.containerd.api.services.version.v1 import version_pb2_grpc
from flotilla.testing import ContainerdPeer, PrivateSuite

from ..harness import Target, Workload

_channels: dict[str, grpc.Channel] = {}


def _channel(t: Target) -> grpc.Channel:
    if t.address not in _channels:
        _channels[t.address] = grpc.insecure_channel(f"unix://{t.address}")
    return _channels[t.address]


def _grpc_call(make: Callable[[grpc.Channel], Callable[[], object]]) -> Callable[[Target], float]:
    calls: dict[str, Callable[[], object]] = {}

    def run(t: Target) -> float:
        call = calls.get(t.address)
        if call is None:
            call = calls[t.address] = make(_channel(t))
            for _ in range(20):  # warm the channel and both ends
                call()
        started = time.perf_counter()
        call()
        return time.perf_counter() - started
    return run


def _ctr(*args: str) -> Callable[[Target], float]:
    def run(t: Target) -> float:
        started = time.perf_counter()
        t.ctr(*args, check=True)
        return time.perf_counter() - started
    return run


def _kib(pid: int, field: str) -> float:
    path = "smaps_rollup" if field == "Pss" else "status"
    key = "Pss:" if field == "Pss" else "VmRSS:"
    for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
        if line.startswith(key):
            return float(line.split()[1])
    return 0.0


def _memory(field: str) -> Callable[[Target], dict[str, float]]:
    def run(t: Target) -> dict[str, float]:
        time.sleep(2)  # idle: let start-up garbage settle
        values = {name: _kib(pid, field) / 1024 for name, pid in t.pids().items()}
        values["total"] = sum(values.values())
        return values
    return run


def _startup(t: Target) -> float:
    if t.name == "flotilla":
        suite = PrivateSuite()
        try:
            return suite.start()
        finally:
            suite.stop()
    peer = ContainerdPeer()
    started = time.perf_counter()
    try:
        peer.start()
        return time.perf_counter() - started
    finally:
        peer.stop()


def workloads() -> list[Workload]:
    return [
        Workload("grpc Version round trip", _grpc_call(
            lambda ch: lambda: version_pb2_grpc.VersionStub(ch).Version(empty_pb2.Empty(), timeout=10)), repeat=1000),
        Workload("grpc Namespaces.List round trip", _grpc_call(
            lambda ch: lambda: namespace_pb2_grpc.NamespacesStub(ch).List(
                namespace_pb2.ListNamespacesRequest(), timeout=10)), repeat=1000),
        Workload("ctr version", _ctr("version"), repeat=20),
        Workload("ctr namespaces ls", _ctr("namespaces", "ls"), repeat=20),
        Workload("idle RSS", _memory("Rss"), repeat=1, unit="MiB"),
        Workload("idle PSS", _memory("Pss"), repeat=1, unit="MiB"),
        Workload("start until the socket answers", _startup, repeat=3),
    ]
