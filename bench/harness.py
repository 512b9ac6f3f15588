"""The benchmark harness: workloads run alternately against Flotilla and containerd.

A ``Workload`` measures one figure: each call of ``run(target)`` is one iteration and
returns the value (seconds unless ``unit`` says otherwise), or a dict of named values
for a figure with several rows (one per process, say). Iterations alternate between the
targets so drift on a noisy machine hits both alike.
"""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from flotilla.testing import ctr as run_ctr

Value = Union[float, dict[str, float], None]


# a Flotilla suite as before issue 29, its bus open to anyone: a workload that names it
# among its targets gets rows of their own for it, "<figure> [bus without credentials]"
OPEN_BUS = "flotilla-open-bus"


def rss_mib(pids: list[int]) -> float:
    """The summed resident memory of ``pids`` (those gone count nothing), MiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


@dataclass
class Target:
    name: str                 # "flotilla", "containerd" or OPEN_BUS
    address: str              # the gRPC socket
    base: Path                # a scratch directory for this target's workloads
    pids: Callable[[], dict[str, int]] = lambda: {}   # process name -> pid, for memory figures
    handle: object = None     # the PrivateSuite or ContainerdPeer behind it

    def ctr(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return run_ctr(self.address, *args, **kw)  # type: ignore[arg-type]


@dataclass
class Workload:
    name: str
    run: Callable[[Target], Value]
    repeat: int = 5
    unit: str = "s"
    targets: tuple[str, ...] = ("flotilla", "containerd")
    setup: Callable[[Target], None] | None = None       # once per target, not measured
    teardown: Callable[[Target], None] | None = None
    higher_is_better: bool = False


@dataclass
class Row:
    figure: str
    unit: str
    samples: dict[str, list[float]] = field(default_factory=dict)

    def stat(self, target: str, q: float) -> float | None:
        values = sorted(self.samples.get(target, []))
        if not values:
            return None
        if q == 0.5:
            return statistics.median(values)
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_workload(w: Workload, targets: list[Target], log: Callable[[str], None]) -> list[Row]:
    active = [t for t in targets if t.name in w.targets]
    rows: dict[str, Row] = {}
    for t in active:
        if w.setup:
            w.setup(t)
    try:
        for i in range(w.repeat):
            # alternate which target goes first so neither always runs on a warmer machine
            for t in (active if i % 2 == 0 else list(reversed(active))):
                value = w.run(t)
                if value is None:
                    continue
                items = value.items() if isinstance(value, dict) else [(w.name, value)]
                for figure, v in items:
                    figure = figure if figure.startswith(w.name) else f"{w.name}/{figure}"
                    target = t.name
                    if target == OPEN_BUS:
                        figure, target = f"{figure} [bus without credentials]", "flotilla"
                    rows.setdefault(figure, Row(figure, w.unit)).samples.setdefault(target, []).append(float(v))
    finally:
        for t in active:
            if w.teardown:
                w.teardown(t)
    log(f"  {w.name}: done")
    return list(rows.values())


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.2f} ms" if v < 10 else f"{v:.2f} s"
    return f"{v:.1f} {unit}"


def table(rows: list[Row]) -> str:
    lines = ["| figure | Flotilla p50 | Flotilla p99 | containerd p50 | containerd p99 | ratio p50 (F/c) | n |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f50, c50 = r.stat("flotilla", 0.5), r.stat("containerd", 0.5)
        ratio = f"{f50 / c50:.2f}" if f50 is not None and c50 else "-"
        n = max((len(v) for v in r.samples.values()), default=0)
        lines.append(f"| {r.figure} | {_fmt(f50, r.unit)} | {_fmt(r.stat('flotilla', 0.99), r.unit)} | "
                     f"{_fmt(c50, r.unit)} | {_fmt(r.stat('containerd', 0.99), r.unit)} | {ratio} | {n} |")
    return "\n".join(lines)
