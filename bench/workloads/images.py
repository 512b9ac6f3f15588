"""Issue 7's figures: cold pulls of the small and of the 256 MiB image from a real registry,
through ctr (client-side pull) and through ``flotilla pull``, Flotilla and containerd side by side.

Cold: before each measured pull the image is removed with ``--sync`` and any blob or snapshot
left in the namespace is removed too, so every run fetches and unpacks everything; then the
disk is synced, so no run pays for the write-back of the one before (a 256 MiB pull leaves
about 512 MiB to write; with that write-back under way, the next run of either daemon was up
to a third slower here).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from collections.abc import Callable

from flotilla.testing import Registry
from flotilla.testing.images import Image, busybox_image, many_files_image, push, random_layers_image

from ..harness import Target, Workload

NAMESPACE = "bench-images"
BIG_MIB = 256
_registry: Registry | None = None
_refs: dict[str, str] = {}
_sizes: dict[str, int] = {}  # bytes of each image's blobs
_IMAGES: dict[str, Callable[[], Image]] = {
    "small": busybox_image, "big": lambda: random_layers_image(BIG_MIB, layers=4), "many-file": many_files_image}


def _ref(kind: str) -> str:
    global _registry
    if _registry is None:
        _registry = Registry()
        _registry.start()
        atexit.register(_registry.stop)
    if kind not in _refs:
        image = _IMAGES[kind]()
        _sizes[kind] = sum(len(b.data) for b in image.blobs())
        push(_registry.host, kind, "latest", image)
        _refs[kind] = f"{_registry.host}/{kind}:latest"
    return _refs[kind]


def _cold(t: Target, ref: str) -> None:
    """Remove the image and everything it left, so the next pull starts from nothing."""
    t.ctr("image", "rm", "--sync", ref, namespace=NAMESPACE)
    for _ in range(5):  # snapshots: children before parents
        keys = t.ctr("snapshots", "ls", namespace=NAMESPACE).stdout.splitlines()[1:]
        if not keys:
            break
        for line in keys:
            t.ctr("snapshots", "rm", line.split()[0], namespace=NAMESPACE)
    blobs = t.ctr("content", "ls", "-q", namespace=NAMESPACE).stdout.split()
    if blobs:
        t.ctr("content", "rm", *blobs, namespace=NAMESPACE)
    os.sync()  # the last run's write-back done (module docstring)


def _ctr_pull(kind: str) -> Callable[[Target], float]:
    def run(t: Target) -> float:
        ref = _ref(kind)
        _cold(t, ref)
        started = time.perf_counter()
        t.ctr("image", "pull", "--plain-http", ref, namespace=NAMESPACE, check=True, timeout=600)
        return time.perf_counter() - started
    return run


def _flotilla_pull(kind: str) -> Callable[[Target], float]:
    def run(t: Target) -> float:
        ref = _ref(kind)
        _cold(t, ref)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flotilla.cli", "--address", t.address, "--namespace", NAMESPACE,
                        "pull", ref], check=True, capture_output=True, timeout=600)
        return time.perf_counter() - started
    return run


def _throughput(kind: str, run: Callable[[Target], float]) -> Callable[[Target], float]:
    """MB/s of the image's blobs (compressed, as fetched)."""
    def mbps(t: Target) -> float:
        took = run(t)
        return _sizes[kind] / 1e6 / took
    return mbps


def _teardown(t: Target) -> None:
    for ref in _refs.values():
        _cold(t, ref)


def workloads() -> list[Workload]:
    return [
        Workload("ctr image pull small (cold)", _ctr_pull("small"), repeat=11, teardown=_teardown),
        Workload(f"ctr image pull {BIG_MIB} MiB (cold)", _throughput("big", _ctr_pull("big")), repeat=3,
                 unit="MB/s", higher_is_better=True, teardown=_teardown),
        Workload("ctr image pull many-file (cold)", _throughput("many-file", _ctr_pull("many-file")), repeat=3,
                 unit="MB/s", higher_is_better=True, teardown=_teardown),
        Workload("flotilla pull small (cold)", _flotilla_pull("small"), repeat=5, teardown=_teardown),
        Workload(f"flotilla pull {BIG_MIB} MiB (cold)", _throughput("big", _flotilla_pull("big")), repeat=3,
                 unit="MB/s", higher_is_better=True, teardown=_teardown),
        Workload("flotilla pull many-file (cold)", _throughput("many-file", _flotilla_pull("many-file")), repeat=3,
                 unit="MB/s", higher_is_better=True, teardown=_teardown),
    ]
