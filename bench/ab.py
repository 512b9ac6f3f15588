"""Is a change faster? Two private suites side by side, measured in alternating rounds.

This VM's speed drifts by 2x over minutes, so two suites measured one after the other say
little. Here both run at once, differing only in environment variables given to some of
their processes; each round measures one suite then the other (the order alternates),
and the answer is the median of the per-round ratios B/A.

    python -m bench.ab '{"nats": {"GOMAXPROCS": "1"}}' prepare-commit
    python -m bench.ab '{"gateway": {"SOME_SWITCH": "1"}}' info --rounds 30

Workloads: ``prepare-commit`` (a Snapshots.Prepare then Commit, as the bench's
``snapshots.prepare_commit``), ``info`` (Content.Info of one blob), ``stat``
(Snapshots.Stat), ``version`` (no forwarding: the gRPC floor).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

import flotilla.deploy as deploy
from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbc_grpc
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2 as spb
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc as spb_grpc
from flotilla._api.containerd.api.services.version.v1 import version_pb2_grpc as pbv_grpc
from flotilla.testing import PrivateSuite

NS = "bench-ab"
MD = [("containerd-namespace", NS)]
Call = Callable[[], Any]


def _prepare_commit(ch: grpc.Channel) -> Call:
    stub = spb_grpc.SnapshotsStub(ch)
    tag = uuid.uuid4().hex[:8]
    count = iter(range(1 << 30))

    def call() -> None:
        key = f"ab-{tag}-{next(count)}"
        stub.Prepare(spb.PrepareSnapshotRequest(snapshotter="overlayfs", key=key), metadata=MD)
        stub.Commit(spb.CommitSnapshotRequest(snapshotter="overlayfs", name=key + "-c", key=key), metadata=MD)
    return call


def _info(ch: grpc.Channel) -> Call:
    stub = pbc_grpc.ContentStub(ch)
    data = uuid.uuid4().bytes
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    list(stub.Write(iter([pbc.WriteContentRequest(action=pbc.COMMIT, ref=digest, total=len(data), expected=digest,
                                                  data=data)]), metadata=MD))
    return lambda: stub.Info(pbc.InfoRequest(digest=digest), metadata=MD)


def _stat(ch: grpc.Channel) -> Call:
    stub = spb_grpc.SnapshotsStub(ch)
    key = "ab-stat-" + uuid.uuid4().hex[:8]
    stub.Prepare(spb.PrepareSnapshotRequest(snapshotter="overlayfs", key=key), metadata=MD)
    return lambda: stub.Stat(spb.StatSnapshotRequest(snapshotter="overlayfs", key=key), metadata=MD)


def _version(ch: grpc.Channel) -> Call:
    stub = pbv_grpc.VersionStub(ch)
    return lambda: stub.Version(empty_pb2.Empty())


WORKLOADS: dict[str, Callable[[grpc.Channel], Call]] = {
    "prepare-commit": _prepare_commit, "info": _info, "stat": _stat, "version": _version}


def _suite(env_by_process: dict[str, dict[str, str]]) -> PrivateSuite:
    render = deploy.Suite._program

    def program(self: deploy.Suite, name: str, command: str, env: dict[str, str], priority: int) -> str:
        return render(self, name, command, {**env, **env_by_process.get(name, {})}, priority)
    deploy.Suite._program = program  # type: ignore[method-assign]
    try:
        suite = PrivateSuite()
        suite.start()
    finally:
        deploy.Suite._program = render  # type: ignore[method-assign]
    return suite


def _median_ms(call: Call, n: int, gap: float) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        time.sleep(gap)  # ctr's calls come with gaps too: a process that was idle must wake
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", help='JSON {process: {VAR: value}} for suite B ("nats", "gateway", ...)')
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=15, help="calls per round and suite")
    parser.add_argument("--gap", type=float, default=0.001, help="seconds between calls")
    args = parser.parse_args()
    variant = json.loads(args.variant)
    suites = {"A": _suite({}), "B": _suite(variant)}
    try:
        channels = {k: grpc.insecure_channel(f"unix://{s.address}") for k, s in suites.items()}
        calls = {k: WORKLOADS[args.workload](ch) for k, ch in channels.items()}
        got: dict[str, list[float]] = {"A": [], "B": []}
        for r in range(args.rounds):
            for k in ("A", "B") if r % 2 == 0 else ("B", "A"):
                _median_ms(calls[k], 3, args.gap)  # wake it up
                got[k].append(_median_ms(calls[k], args.calls, args.gap))
        ratios = [b / a for a, b in zip(got["A"], got["B"])]
        print(f"A (as is)  median {statistics.median(got['A']):.2f} ms")
        print(f"B {json.dumps(variant)}  median {statistics.median(got['B']):.2f} ms")
        print(f"B/A per round: {' '.join(f'{x:.2f}' for x in ratios)}")
        print(f"B/A median {statistics.median(ratios):.3f}")
        for ch in channels.values():
            ch.close()
    finally:
        for s in suites.values():
            s.stop()


if __name__ == "__main__":
    main()
