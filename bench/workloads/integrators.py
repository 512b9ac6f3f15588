"""Issue 27's figures: a stock containerd with Flotilla as its content store and snapshotter
(``[proxy_plugins]``, docs/integrators.md) against the same containerd with its built-in
ones. Target "flotilla" is a pair of proxied containerds on a Flotilla suite of their own
(the harness' suite serves no consumers); target "containerd" is the harness' containerd
and a second one with built-in stores.

- cold ``ctr image pull`` of the small and the 256 MiB image (the first containerd);
- ``ctr run --rm IMAGE id true`` (the small image, pulled);
- the second containerd's cold pull of an image the first holds: through Flotilla the
  registry serves it no blob; with built-in stores it fetches everything again.

``python -m bench.workloads.integrators [ROUNDS]`` measures the same side by side without
the harness (alternating, medians), for a quick look: never while tests run (2 cores).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from flotilla.testing import PrivateSuite, ctr
from flotilla.testing.peers import ContainerdPeer

from ..harness import Target, Workload
from .images import BIG_MIB, _ref, _refs

NAMESPACE = "bench-integrators"
CONSUMERS = ("bench-a", "bench-b")
_pairs: dict[str, tuple[ContainerdPeer, ContainerdPeer, list[str]]] = {}  # target -> (first, second, ctr flags)


def _pair(t: Target) -> tuple[ContainerdPeer, ContainerdPeer, list[str]]:
    """The target's two containerds, started at first use and stopped at exit."""
    if t.name not in _pairs:
        stack = contextlib.ExitStack()
        atexit.register(stack.close)
        if t.name == "flotilla":
            suite = stack.enter_context(PrivateSuite(FLOTILLA_PROXY_CONSUMERS=",".join(CONSUMERS)))
            socks = [suite.suite.state / "proxy" / f"{c}.sock" for c in CONSUMERS]
            deadline = time.monotonic() + 10
            while not all(s.is_socket() for s in socks) and time.monotonic() < deadline:
                time.sleep(0.05)
            first, second = (stack.enter_context(ContainerdPeer(proxy=s)) for s in socks)
            flags = ["--snapshotter", "flotilla"]
        else:
            first = t.handle if isinstance(t.handle, ContainerdPeer) else stack.enter_context(ContainerdPeer())
            second = stack.enter_context(ContainerdPeer())
            flags = []
        _pairs[t.name] = (first, second, flags)
    return _pairs[t.name]


def _ctr(peer: ContainerdPeer, *args: str, timeout: float = 600) -> None:
    ctr(peer.address, *args, namespace=NAMESPACE, timeout=timeout, check=True)


def _cold(peer: ContainerdPeer, ref: str) -> None:
    """Gone from this containerd (its collector lets go of the blobs and snapshots)."""
    ctr(peer.address, "image", "rm", "--sync", ref, namespace=NAMESPACE)
    os.sync()  # the last run's write-back done, as in images.py


def _pull(kind: str, which: int) -> Callable[[Target], float]:
    """Cold pull by the first containerd (which=0), or by the second while the first holds
    the image (which=1)."""
    def run(t: Target) -> float:
        ref = _ref(kind)
        peers = _pair(t)
        flags = peers[2]
        if which == 1:
            with contextlib.suppress(Exception):  # the first holds it already: cheap
                _ctr(peers[0], "image", "pull", "--plain-http", *flags, ref)
        else:  # nobody may hold it: the second containerd lets go too
            _cold(peers[1], ref)
        _cold(peers[which], ref)
        started = time.perf_counter()
        _ctr(peers[which], "image", "pull", "--plain-http", *flags, ref)
        return time.perf_counter() - started
    return run


def _mbps(run: Callable[[Target], float]) -> Callable[[Target], float]:
    return lambda t: BIG_MIB * 1.048576 / run(t)


def _run_rm(t: Target) -> float:
    first, _, flags = _pair(t)
    ref = _ref("small")
    ctr(first.address, "image", "pull", "--plain-http", *flags, ref, namespace=NAMESPACE, timeout=600)
    started = time.perf_counter()
    _ctr(first, "run", "--rm", *flags, ref, f"i27-{uuid.uuid4().hex[:8]}", "true")
    return time.perf_counter() - started


def _teardown(t: Target) -> None:
    if t.name in _pairs:
        for peer in _pairs[t.name][:2]:
            for ref in list(_refs.values()):
                _cold(peer, ref)


def workloads() -> list[Workload]:
    return [
        Workload("integrators/ctr image pull small (cold), proxy plugins vs built-in", _pull("small", 0), repeat=9,
                 teardown=_teardown),
        Workload(f"integrators/ctr image pull {BIG_MIB} MiB (cold), proxy plugins vs built-in",
                 _mbps(_pull("big", 0)), repeat=3, unit="MB/s", higher_is_better=True, teardown=_teardown),
        Workload("integrators/ctr run --rm IMAGE true, proxy plugins vs built-in", _run_rm, repeat=15,
                 teardown=_teardown),
        Workload("integrators/second containerd's pull small (the first has it)", _pull("small", 1), repeat=9,
                 teardown=_teardown),
        Workload(f"integrators/second containerd's pull {BIG_MIB} MiB (the first has it)", _pull("big", 1), repeat=3,
                 teardown=_teardown),
    ]


def main(rounds: int) -> None:
    """The figures without the harness: each round runs every workload on both targets,
    alternating which goes first; prints medians (ms, or MB/s)."""
    base = Path(tempfile.gettempdir())  # unused by these workloads: each peer has its own
    targets = [Target("flotilla", "", base), Target("containerd", "", base)]
    samples: dict[tuple[str, str], list[float]] = {}
    chosen = workloads()
    for i in range(rounds):
        for w in chosen:
            if i >= w.repeat:
                continue
            for t in (targets if i % 2 == 0 else targets[::-1]):
                samples.setdefault((w.name, t.name), []).append(w.run(t))
        print(f"round {i + 1}/{rounds} done", file=sys.stderr, flush=True)
    for w in chosen:
        scale, unit = (1, w.unit) if w.unit != "s" else (1000, "ms")
        got = {n: sorted(round(v * scale, 1) for v in samples[(w.name, n)]) for n in ("flotilla", "containerd")}
        f, c = (statistics.median(got[n]) for n in ("flotilla", "containerd"))
        print(f"{w.name}: Flotilla {f:.1f} {unit}, containerd {c:.1f} {unit}, ratio {f / c:.2f} "
              f"(n={len(got['flotilla'])}; Flotilla {got['flotilla']}, containerd {got['containerd']})")
    for t in targets:
        _teardown(t)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
