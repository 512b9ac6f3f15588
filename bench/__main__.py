"""``python -m bench [-k NAME]``: start Flotilla and containerd side by side and measure."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
import time
from pathlib import Path

from flotilla.testing import ContainerdPeer, PrivateSuite

from .harness import OPEN_BUS, Row, Target, run_workload, table
from .workloads import all_workloads

RESULTS = Path(__file__).resolve().parent / "results"


def _machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, {cpu}, kernel {platform.release()}"


def flotilla_target(suite: PrivateSuite, name: str = "flotilla") -> Target:
    def pids() -> dict[str, int]:
        out = {}
        for line in suite.suite.ctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "RUNNING":
                out[parts[0]] = int(parts[3].rstrip(","))
        return out
    base = suite.base / "bench"
    base.mkdir(exist_ok=True)
    return Target(name, suite.address, base, pids, suite)


def containerd_target(peer: ContainerdPeer) -> Target:
    base = peer.base / "bench"
    base.mkdir(exist_ok=True)
    return Target("containerd", peer.address, base,
                  lambda: {"containerd": peer.proc.pid} if peer.proc else {}, peer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("-k", dest="select", default="", help="only workloads whose name contains this")
    parser.add_argument("--skip", default="", help="leave out workloads whose name contains this")
    parser.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = parser.parse_args(argv)
    workloads = [w for w in all_workloads()
                 if args.select in w.name and not (args.skip and args.skip in w.name)]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"bench: {len(workloads)} workloads on {_machine()}")
    rows: list[Row] = []
    started = time.monotonic()
    with PrivateSuite() as suite, ContainerdPeer() as peer:
        targets = [flotilla_target(suite), containerd_target(peer)]
        for w in workloads:
            try:
                with contextlib.ExitStack() as stack:
                    extra = []
                    if OPEN_BUS in w.targets:  # up only for the workloads that compare with it
                        extra.append(flotilla_target(stack.enter_context(PrivateSuite(auth=False)), OPEN_BUS))
                    rows += run_workload(w, targets + extra, log)
            except Exception as exc:  # one broken workload must not cost the whole run
                log(f"  {w.name}: FAILED: {exc!r}")
    text = table(rows)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        out = RESULTS / f"{now:%Y-%m-%d}-{platform.node()}.md"
        extra = " ".join(f"{flag} '{value}'" for flag, value in (("-k", args.select), ("--skip", args.skip)) if value)
        command = f'make bench BENCH_ARGS="{extra}"' if extra else "make bench"
        with out.open("a") as f:
            f.write(f"\n## {now:%Y-%m-%d %H:%M} UTC: {_machine()}\n"
                    f"`{command}` ({time.monotonic() - started:.0f} s)\n\n{text}\n")
        log(f"bench: results appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
