"""Issue 25's bounded run: a fixed part of containerd's own client test suite (v1.6.20
``integration/client``, ../shared/peer-suite) against each daemon of the bench, so that a
regression in what the Go client expects shows up in every ``make bench`` report. The whole
suite, both daemons side by side, is ``make peer-suite`` (tools/peer_suite.py, about 25
minutes), whose runner this uses.

The part: one or two tests of each area (images, content, leases, snapshots, containers,
tasks, exec, IO, terminals, signals, import/export, ttrpc), each of which passes against both
daemons on this machine (docs/compatibility.md). The figures are how many pass and how many
do not; the suite's own script builds the test binary the first time (a few minutes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from ..harness import Target, Workload

TOOL = Path(__file__).resolve().parents[2] / "tools" / "peer_suite.py"
BOUNDED = ("TestImagePull", "TestContentClient", "TestLeaseResources", "TestSnapshotterClient",
           "TestNewContainer", "TestContainerStart", "TestContainerOutput", "TestContainerExec",
           "TestContainerCloseIO", "TestContainerAttach", "TestContainerPTY", "TestContainerKill",
           "TestTaskUpdate", "TestExportAndImport", "TestClientTTRPC_New")


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_suite", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bounded(t: Target) -> dict[str, float] | None:
    tool = _tool()
    if not tool.SCRIPT.exists():
        return None
    results = tool.run(f"bench-{t.name}", t.address, f"^({'|'.join(BOUNDED)})$")
    passed = sum(result == "PASS" for result, _ in results.values())
    return {"tests passed": float(passed), "tests not passed": float(len(results) - passed)}


def workloads() -> list[Workload]:
    return [Workload(f"peer suite, {len(BOUNDED)} tests", bounded, repeat=1, unit="",
                     teardown=lambda _t: _tool().stop_registry())]
