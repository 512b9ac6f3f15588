"""Issue 4's figures: List latency with 1,000 and 10,000 images and containers in a
namespace, Flotilla against containerd, and how each grows from 1k to 10k; issue 28's
``ctr containers ls`` of 50. (100,000: tools/list_growth.py, the metadata store alone.)

Setup (not measured) creates the records through the gRPC API with the Python stubs,
64 calls in flight, the same script for both targets. Each measured iteration is one
Images.List or Containers.List call on a warm channel, timed with perf_counter."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pbc
from flotilla._api.containerd.api.services.containers.v1 import containers_pb2_grpc as pbc_grpc
from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla._api.containerd.api.services.images.v1 import images_pb2_grpc as pbi_grpc

from ..harness import Target, Workload

SIZES = (1_000, 10_000)
_WINDOW = 64
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
# about the size of a small OCI spec: lists carry it for every container
_SPEC = (b'{"ociVersion":"1.0.2-dev","process":{"args":["/bin/sh"],"env":["PATH=/usr/bin:/bin"],"cwd":"/"},'
         b'"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},'
         b'{"type":"mount"},{"type":"network"}],"maskedPaths":["/proc/acpi","/proc/kcore","/proc/keys"]}}')
_channels: dict[str, grpc.Channel] = {}


def _channel(t: Target) -> grpc.Channel:
    if t.address not in _channels:
        _channels[t.address] = grpc.insecure_channel(f"unix://{t.address}", options=_OPTIONS)
    return _channels[t.address]


def _ns(kind: str, n: int) -> str:
    return f"bench-{kind}-{n}"


def _many(calls: list[Callable[[], Any]]) -> None:
    """Run future-returning calls with a bounded window in flight."""
    pending: deque[Any] = deque()
    for call in calls:
        pending.append(call())
        if len(pending) >= _WINDOW:
            pending.popleft().result()
    while pending:
        pending.popleft().result()


def _image(i: int) -> pbi.Image:
    img = pbi.Image(name=f"registry.example/bench/app-{i:05d}:v1", labels={"team": "bench", "idx": str(i)})
    img.target.media_type = "application/vnd.oci.image.manifest.v1+json"
    img.target.digest = "sha256:" + f"{i:064x}"
    img.target.size = 1000 + i
    return img


def _container(i: int) -> pbc.Container:
    c = pbc.Container(id=f"bench-{i:06d}", image=f"registry.example/bench/app-{i:05d}:v1",
                      labels={"team": "bench"}, snapshotter="overlayfs", snapshot_key=f"bench-{i:05d}")
    c.runtime.name = "io.containerd.runc.v2"
    c.spec.type_url, c.spec.value = "types.containerd.io/opencontainers/runtime-spec/1/Spec", _SPEC
    return c


def setup(t: Target) -> None:
    ch = _channel(t)
    images, containers = pbi_grpc.ImagesStub(ch), pbc_grpc.ContainersStub(ch)
    for n in SIZES:
        im, cm = [("containerd-namespace", _ns("images", n))], [("containerd-namespace", _ns("containers", n))]
        have = len(images.List(pbi.ListImagesRequest(), metadata=im, timeout=120).images)
        _many([lambda i=i: images.Create.future(pbi.CreateImageRequest(image=_image(i)), metadata=im, timeout=120)
               for i in range(have, n)])
        have = len(containers.List(pbc.ListContainersRequest(), metadata=cm, timeout=120).containers)
        _many([lambda i=i: containers.Create.future(pbc.CreateContainerRequest(container=_container(i)),
                                                    metadata=cm, timeout=120)
               for i in range(have, n)])


def teardown(t: Target) -> None:
    """Leave the targets as found: the records go again (through the API, unmeasured)."""
    ch = _channel(t)
    images, containers = pbi_grpc.ImagesStub(ch), pbc_grpc.ContainersStub(ch)
    for n in SIZES:
        im, cm = [("containerd-namespace", _ns("images", n))], [("containerd-namespace", _ns("containers", n))]
        _many([lambda i=i: images.Delete.future(pbi.DeleteImageRequest(name=_image(i).name), metadata=im, timeout=120)
               for i in range(n)])
        _many([lambda i=i: containers.Delete.future(pbc.DeleteContainerRequest(id=_container(i).id),
                                                    metadata=cm, timeout=120)
               for i in range(n)])


def run(t: Target) -> dict[str, float]:
    ch = _channel(t)
    images, containers = pbi_grpc.ImagesStub(ch), pbc_grpc.ContainersStub(ch)
    out: dict[str, float] = {}
    for n in SIZES:
        im = [("containerd-namespace", _ns("images", n))]
        started = time.perf_counter()
        got = len(images.List(pbi.ListImagesRequest(), metadata=im, timeout=120).images)
        out[f"images {n // 1000}k"] = time.perf_counter() - started
        assert got == n, (t.name, "images", got)
        cm = [("containerd-namespace", _ns("containers", n))]
        started = time.perf_counter()
        got = len(containers.List(pbc.ListContainersRequest(), metadata=cm, timeout=120).containers)
        out[f"containers {n // 1000}k"] = time.perf_counter() - started
        assert got == n, (t.name, "containers", got)
    return out


_LS_NS, _LS_COUNT = "bench-ls-50", 50


def setup_ls(t: Target) -> None:
    containers = pbc_grpc.ContainersStub(_channel(t))
    md = [("containerd-namespace", _LS_NS)]
    _many([lambda i=i: containers.Create.future(pbc.CreateContainerRequest(container=_container(i)), metadata=md,
                                                timeout=120) for i in range(_LS_COUNT)])


def teardown_ls(t: Target) -> None:
    containers = pbc_grpc.ContainersStub(_channel(t))
    md = [("containerd-namespace", _LS_NS)]
    _many([lambda i=i: containers.Delete.future(pbc.DeleteContainerRequest(id=_container(i).id), metadata=md,
                                                timeout=120) for i in range(_LS_COUNT)])


def run_ls(t: Target) -> float:
    started = time.perf_counter()
    out = t.ctr("containers", "ls", namespace=_LS_NS, check=True).stdout
    took = time.perf_counter() - started
    assert out.count("\n") == _LS_COUNT + 1, (t.name, out)
    return took


def workloads() -> list[Workload]:
    return [Workload("metadata list", run, repeat=11, setup=setup, teardown=teardown),
            Workload("ctr containers ls 50", run_ls, repeat=20, setup=setup_ls, teardown=teardown_ls)]
