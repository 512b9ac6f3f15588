"""Issue 22's figures: what one component's death costs clients, Flotilla against containerd.

For each Flotilla component (and, as many times, for containerd, whose daemon is its only
component): Debian's ctr runs its loops (pulls, run --rm, detached runs, lists, ingests;
flotilla/testing/chaos.py) on a suite of its own; the component is SIGKILLed once, and the
figures are the client calls that failed and the seconds until the socket answered again
(supervisord restarts a Flotilla process; containerd is started again at once, as systemd
would). Also the cost of request ids on a forwarded call: Leases.Create with the services'
journals against a suite without them (FLOTILLA_JOURNAL=off).
"""

from __future__ import annotations

import os
import signal
import statistics
import time
import uuid

import grpc

from flotilla._api.containerd.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from flotilla.testing import ContainerdPeer, PrivateSuite, Registry
from flotilla.testing.chaos import Chaos
from flotilla.testing.images import busybox_image, push

from ..harness import Target, Workload, rss_mib

COMPONENTS = ("nats", "metadata", "content", "snapshots", "runtime", "transfer", "gateway")
_BEFORE, _AFTER = 2.0, 3.0  # seconds of loops before a kill, and after the component answers
_state: dict[str, object] = {}


def _setup(t: Target) -> None:
    if "registry" not in _state:
        registry = Registry()
        registry.start()
        push(registry.host, "busybox", "latest", busybox_image())
        _state["registry"] = registry
    peer: PrivateSuite | ContainerdPeer = PrivateSuite() if t.name == "flotilla" else ContainerdPeer()
    peer.start()
    _state[t.name] = peer


def _teardown(t: Target) -> None:
    peer = _state.pop(t.name, None)
    if peer is not None:
        peer.stop()  # type: ignore[attr-defined]
    if not any(k in _state for k in ("flotilla", "containerd")):
        registry = _state.pop("registry", None)
        if registry is not None:
            registry.stop()  # type: ignore[attr-defined]


def _answers(address: str) -> bool:
    try:
        with grpc.insecure_channel(f"unix://{address}") as channel:
            leases_pb2_grpc.LeasesStub(channel).List(leases_pb2.ListRequest(), timeout=1,
                                                     metadata=[("containerd-namespace", "default")])
        return True
    except grpc.RpcError:
        return False


def _one_kill(t: Target, component: str) -> dict[str, float]:
    peer = _state[t.name]
    address = peer.address  # type: ignore[attr-defined]
    ref = f"{_state['registry'].host}/busybox:latest"  # type: ignore[attr-defined]
    ns = "kill-" + uuid.uuid4().hex[:6]
    chaos = Chaos(address, ref, namespace=ns, ingest_mib=16)
    chaos.ctr("setup", "images", "pull", "--plain-http", ref)
    chaos.record.calls.clear()
    chaos.start()
    time.sleep(_BEFORE)
    killed = time.monotonic()
    if isinstance(peer, PrivateSuite):
        os.kill(peer.suite.program_pid(component), signal.SIGKILL)
        while not peer.suite.answers() and time.monotonic() - killed < 60:
            time.sleep(0.02)
    else:
        assert peer.proc is not None
        os.kill(peer.proc.pid, signal.SIGKILL)
        peer.proc.wait()
        peer.start()  # at once, as systemd's Restart=always would
    back = time.monotonic() - killed
    time.sleep(_AFTER)
    chaos.finish()
    failed = len(chaos.record.failed())
    chaos.clean()  # what failed calls left must not outlive the peer (its shims would)
    return {f"failed calls per kill/{component}": float(failed),
            f"seconds until it answers again/{component}": back}


def _kills(t: Target) -> dict[str, float]:
    out: dict[str, float] = {}
    for component in COMPONENTS:
        out.update(_one_kill(t, component))
    return out


def _lease_create_ms(address: str, n: int = 200) -> float:
    with grpc.insecure_channel(f"unix://{address}") as channel:
        stub = leases_pb2_grpc.LeasesStub(channel)
        md = [("containerd-namespace", "bench-leases")]
        times = []
        for _ in range(n):
            lease = "l-" + uuid.uuid4().hex
            started = time.perf_counter()
            stub.Create(leases_pb2.CreateRequest(id=lease), metadata=md, timeout=10)
            times.append(time.perf_counter() - started)
            stub.Delete(leases_pb2.DeleteRequest(id=lease), metadata=md, timeout=10)
    return statistics.median(times) * 1000


def _leases(t: Target) -> dict[str, float]:
    figures = {"Leases.Create p50 ms": _lease_create_ms(t.address)}
    if t.name == "flotilla":
        with PrivateSuite(FLOTILLA_JOURNAL="off") as before:
            figures["Leases.Create p50 ms [no request journal]"] = _lease_create_ms(before.address)
    return figures


def _second_instances(t: Target) -> dict[str, float]:
    """What a second metadata and content instance cost in memory and buy under a kill: the
    calls failed and the slowest call of the loops around one SIGKILL, one instance each
    against two."""
    ref = f"{_state['registry'].host}/busybox:latest"  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for count in (1, 2):
        with PrivateSuite(instances={"gateway": 2, "metadata": count, "content": count}) as suite:
            for name in ("metadata", "content"):
                pids = suite.suite.program_pids(name)
                out[f"RSS per instance MiB/{name} [{count} instances]"] = rss_mib(pids) / len(pids)
                chaos = Chaos(suite.address, ref, namespace="two-" + uuid.uuid4().hex[:6], ingest_mib=16)
                chaos.ctr("setup", "images", "pull", "--plain-http", ref)
                chaos.record.calls.clear()
                chaos.start(("runs", "lists", "ingests"))
                time.sleep(_BEFORE)
                os.kill(pids[0], signal.SIGKILL)
                killed = time.monotonic()
                time.sleep(_AFTER + 2)
                chaos.finish()
                around = [c for c in chaos.record.calls if c.started <= killed + 3 and c.ended >= killed]
                out[f"failed calls per kill/{name} [{count} instances]"] = float(len(chaos.record.failed()))
                out[f"slowest call around a kill s/{name} [{count} instances]"] = max(
                    (c.ended - c.started for c in around), default=0.0)
                chaos.clean()
    return out


def workloads() -> list[Workload]:
    return [
        Workload("kill", _kills, repeat=1, unit="", setup=_setup, teardown=_teardown),
        Workload("request ids", _leases, repeat=3, unit="ms"),
        Workload("second instances", _second_instances, repeat=1, unit="", targets=("flotilla",),
                 setup=_setup, teardown=_teardown),
    ]
