"""The Differ's worker processes."""

from __future__ import annotations

import resource
from pathlib import Path

from flotilla.services.snapshots.diffs import Differ


def _faults_of_piece_churn() -> int:
    """Minor page faults of a stream of 1 MiB pieces, four alive at a time (as a layer's)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        pieces = [bytearray(1 << 20) for _ in range(4)]
        del pieces
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


async def test_a_worker_keeps_its_freed_heap(tmp_path: Path) -> None:
    # glibc's defaults in a fresh process unmap and fault in each round's 4 MiB again:
    # about 50,000 faults here; kept, the first round's 1,000
    differ = Differ(None, tmp_path / "scratch", workers=1)  # type: ignore[arg-type]
    try:
        await differ.warm()
        faults = [await differ._run(_faults_of_piece_churn) for _ in range(2)]
    finally:
        differ.close()
    assert faults[0] < 10_000 and faults[1] < 2_000, faults
