"""Issue 23's figures: a farm of 3 hosts (flotilla/testing/farm.py: network namespaces, a
NATS cluster with TLS routes, metadata on one PostgreSQL) against a single host.

Forwarded call latency (Namespaces.List, Images.List of 1,000 images created through
another host) on farm host 2, on the single-host Flotilla suite (SQLite) and on containerd;
the RSS of one host's processes (supervisord, nats-server and the suite's processes; for
containerd its daemon); and, on the farm only, the seconds from a host's processes all being
SIGKILLed and started again until its socket answers with every service.
"""

from __future__ import annotations

import statistics
import time

import grpc

from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla._api.containerd.api.services.images.v1 import images_pb2_grpc as pbi_grpc
from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2 as pbn
from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2_grpc as pbn_grpc
from flotilla.testing.farm import Farm

from ..harness import Target, Workload, rss_mib
from .metadata import _image, _many

IMAGES = 1_000
NS = "bench-farm-images"
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]
_state: dict[str, Farm] = {}


def _create_images(address: str) -> None:
    with grpc.insecure_channel(f"unix://{address}", options=_OPTIONS) as ch:
        images, md = pbi_grpc.ImagesStub(ch), [("containerd-namespace", NS)]
        have = len(images.List(pbi.ListImagesRequest(), metadata=md, timeout=120).images)
        _many([lambda i=i: images.Create.future(pbi.CreateImageRequest(image=_image(i)), metadata=md, timeout=120)
               for i in range(have, IMAGES)])


def _setup(t: Target) -> None:
    _create_images(t.address)
    if t.name == "flotilla":
        # entered, not only started: a start that fails removes what it made (the harness
        # runs teardown only after a setup that succeeded)
        _state["farm"] = Farm(3).__enter__()
        farm = _state["farm"]
        _create_images(farm.hosts[0].socket)  # host 1 makes them, host 2 lists them


def _teardown(t: Target) -> None:
    with grpc.insecure_channel(f"unix://{t.address}") as ch:
        images, md = pbi_grpc.ImagesStub(ch), [("containerd-namespace", NS)]
        _many([lambda i=i: images.Delete.future(pbi.DeleteImageRequest(name=_image(i).name), metadata=md,
                                                timeout=120) for i in range(IMAGES)])
    farm = _state.pop("farm", None)
    if farm is not None:
        farm.stop()


def _latencies(address: str) -> dict[str, float]:
    with grpc.insecure_channel(f"unix://{address}", options=_OPTIONS) as ch:
        namespaces, images = pbn_grpc.NamespacesStub(ch), pbi_grpc.ImagesStub(ch)
        md = [("containerd-namespace", NS)]
        namespaces.List(pbn.ListNamespacesRequest(), timeout=30)  # a warm channel
        ns_times, list_times = [], []
        for _ in range(100):
            started = time.perf_counter()
            namespaces.List(pbn.ListNamespacesRequest(), timeout=30)
            ns_times.append(time.perf_counter() - started)
        for _ in range(9):
            started = time.perf_counter()
            got = len(images.List(pbi.ListImagesRequest(), metadata=md, timeout=120).images)
            list_times.append(time.perf_counter() - started)
            assert got == IMAGES, got
    return {"Namespaces.List p50 ms": statistics.median(ns_times) * 1000,
            "Images.List 1k p50 ms": statistics.median(list_times) * 1000}


def _run(t: Target) -> dict[str, float]:
    out = _latencies(t.address)
    if t.name == "containerd":
        out["RSS of one host MiB"] = rss_mib(list(t.pids().values()))
        return out
    suite = t.handle.suite  # type: ignore[attr-defined]
    out["RSS of one host MiB"] = rss_mib([suite.pid() or 0, *suite.program_pids()])
    h2 = _state["farm"].hosts[1]
    out.update({f"{k} [farm of 3]": v for k, v in _latencies(h2.socket).items()})
    out["RSS of one host MiB [farm of 3]"] = rss_mib([h2.suite.pid() or 0, *h2.suite.program_pids()])
    h2.lose()
    out["seconds until a lost host answers again [farm of 3]"] = h2.up()
    return out


def workloads() -> list[Workload]:
    return [Workload("farm of 3", _run, repeat=3, unit="", setup=_setup, teardown=_teardown)]
