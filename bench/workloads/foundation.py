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

from ..harness import OPEN_BUS, Target, Workload

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


def _suite_pids(suite: PrivateSuite) -> dict[str, int]:
    out = {}
    for line in suite.suite.ctl("status").stdout.splitlines():
        parts = line.replace(",", " ").split()
        if "pid" in parts:
            out[parts[0]] = int(parts[parts.index("pid") + 1])
    return out


def _idle_memory(t: Target) -> dict[str, float]:
    """RSS and PSS of a freshly started, idle instance (not the one the other workloads
    have exercised), per process and in total."""
    def measure(pids: dict[str, int]) -> dict[str, float]:
        time.sleep(3)  # let start-up settle
        values: dict[str, float] = {}
        for field in ("Rss", "Pss"):
            per = {name: _kib(pid, field) / 1024 for name, pid in pids.items()}
            values.update({f"{field.lower()} {name}": v for name, v in per.items()})
            values[f"{field.lower()} total"] = sum(per.values())
        return values

    if t.name == "flotilla":
        with PrivateSuite() as suite:
            return measure(_suite_pids(suite))
    with ContainerdPeer() as peer:
        assert peer.proc is not None
        return measure({"containerd": peer.proc.pid})


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
                namespace_pb2.ListNamespacesRequest(), timeout=10)), repeat=1000,
                 targets=("flotilla", "containerd", OPEN_BUS)),
        Workload("ctr version", _ctr("version"), repeat=20),
        Workload("ctr namespaces ls", _ctr("namespaces", "ls"), repeat=20),
        Workload("idle memory", _idle_memory, repeat=1, unit="MiB"),
        Workload("start until the socket answers", _startup, repeat=3),
    ]
