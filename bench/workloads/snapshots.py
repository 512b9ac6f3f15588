"""Issue 5's figures, Flotilla and containerd side by side, through the Snapshots and Diff
gRPC APIs (the same client code for both):

* ``snapshots.prepare_commit``: latency of one Prepare followed by Commit (a new base
  snapshot each time); each iteration is the median of 40 pairs.
* ``snapshots.apply_4x64MiB/parallel``: four independent 64 MiB gzip layers, each applied
  into its own fresh snapshot, the four Apply calls in flight at once (Flotilla spreads them
  over its worker processes);
  ``.../sequential``: the same four one after another, as containerd 1.6's unpacker does.
* ``snapshots.apply_10k_files``: one gzip layer of 10 000 files of 1 KiB in 100 directories
  (per-entry cost, where a Python applier pays most).

Layers are made once per target (random-ish files, 256 KiB each) and ingested with ctr,
unmeasured. Snapshots made here are removed after each iteration.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import random
import statistics
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

from flotilla.testing import CTR

from ..harness import Target, Workload
from ..nullgrpc import against

NS = "bench-snapshots"
MiB = 1 << 20
LAYERS, LAYER_SIZE, FILE_SIZE = 4, 64 * MiB, 256 * 1024
PAIRS = 40
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ROOT = {"containerd.io/gc.root": "bench"}  # neither side's garbage collector takes them mid-run
_layers: dict[str, list[tuple[str, int]]] = {}


def _stubs():  # type: ignore[no-untyped-def]
    import grpc
    from flotilla._api.containerd.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
    from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
    from flotilla._api.containerd.api.types import descriptor_pb2
    return grpc, diff_pb2, diff_pb2_grpc, snapshots_pb2, snapshots_pb2_grpc, descriptor_pb2


def _write_gzip(raw: io.BytesIO, path: Path) -> tuple[str, int]:
    """The tar in ``raw`` as a gzip layer at ``path``: its digest and size."""
    blob = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
    path.write_bytes(blob)
    return "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob)


def _make_layer(path: Path, seed: int) -> tuple[str, int]:
    """A gzip layer of LAYER_SIZE bytes of files, half compressible (like binaries)."""
    rnd = random.Random(seed)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo(f"layer{seed}")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(d)
        for i in range(LAYER_SIZE // FILE_SIZE):
            data = rnd.randbytes(FILE_SIZE // 2) + bytes(FILE_SIZE // 2)
            info = tarfile.TarInfo(f"layer{seed}/f{i:05d}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
    return _write_gzip(raw, path)


def setup_layers(t: Target) -> None:
    out = []
    for i in range(LAYERS):
        path = t.base / f"snap-layer-{i}.tar.gz"
        digest, size = _make_layer(path, i)
        with open(path, "rb") as f:
            subprocess.run([CTR, "--address", t.address, "-n", NS, "content", "ingest", "--expected-digest", digest,
                            "--expected-size", str(size), "bench-" + uuid.uuid4().hex], stdin=f, check=True,
                           capture_output=True)
        t.ctr("content", "label", digest, "containerd.io/gc.root=bench", namespace=NS, check=True)
        out.append((digest, size))
    _layers[t.name] = out


def teardown_layers(t: Target) -> None:
    for digest, _ in _layers.pop(t.name, []):
        t.ctr("content", "rm", digest, namespace=NS)


def prepare_commit(t: Target) -> float:
    grpc, _, _, spb, sgrpc, _ = _stubs()
    md = [("containerd-namespace", NS)]
    tag = uuid.uuid4().hex[:8]
    times = []
    with grpc.insecure_channel(f"unix://{t.address}") as ch:
        stub = sgrpc.SnapshotsStub(ch)
        list(stub.List(spb.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=md))  # warm the channel
        for i in range(PAIRS):
            key = f"pc-{tag}-{i}"
            started = time.perf_counter()
            stub.Prepare(spb.PrepareSnapshotRequest(snapshotter="overlayfs", key=key, labels=ROOT), metadata=md)
            stub.Commit(spb.CommitSnapshotRequest(snapshotter="overlayfs", name=key + "-c", key=key,
                                                  labels=ROOT), metadata=md)
            times.append(time.perf_counter() - started)
        for i in range(PAIRS):
            stub.Remove(spb.RemoveSnapshotRequest(snapshotter="overlayfs", key=f"pc-{tag}-{i}-c"), metadata=md)
    return statistics.median(times)


def prepare_commit_floor(t: Target) -> float:
    """The same pairs against a gRPC server that answers without doing anything
    (bench/nullgrpc.py): the floor of a Python gateway."""
    blob = t.base / "null-blob"
    blob.touch()
    return against(t, blob, prepare_commit)


def _apply_all(t: Target, parallel: bool) -> float:
    grpc, dpb, dgrpc, spb, sgrpc, descpb = _stubs()
    md = [("containerd-namespace", NS)]
    tag = uuid.uuid4().hex[:8]
    with grpc.insecure_channel(f"unix://{t.address}",
                               options=[("grpc.max_receive_message_length", 16 << 20)]) as ch:
        snaps, diff = sgrpc.SnapshotsStub(ch), dgrpc.DiffStub(ch)
        mounts = [list(snaps.Prepare(spb.PrepareSnapshotRequest(snapshotter="overlayfs", key=f"ap-{tag}-{i}", labels=ROOT),
                                     metadata=md).mounts) for i in range(LAYERS)]

        def apply(i: int) -> None:
            digest, size = _layers[t.name][i]
            desc = descpb.Descriptor(media_type=GZIP, digest=digest, size=size)
            diff.Apply(dpb.ApplyRequest(diff=desc, mounts=mounts[i]), metadata=md, timeout=600)

        started = time.perf_counter()
        if parallel:
            with concurrent.futures.ThreadPoolExecutor(LAYERS) as pool:
                list(pool.map(apply, range(LAYERS)))
        else:
            for i in range(LAYERS):
                apply(i)
        elapsed = time.perf_counter() - started
        for i in range(LAYERS):
            snaps.Remove(spb.RemoveSnapshotRequest(snapshotter="overlayfs", key=f"ap-{tag}-{i}"), metadata=md)
    return elapsed


def apply_layers(t: Target) -> dict[str, float]:
    return {"parallel": _apply_all(t, True), "sequential": _apply_all(t, False)}


def _make_small_files(path: Path) -> tuple[str, int]:
    rnd = random.Random(7)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(100):
            info = tarfile.TarInfo(f"d{d:03d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
            for f in range(100):
                data = rnd.randbytes(1024)
                info = tarfile.TarInfo(f"d{d:03d}/f{f:03d}")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
                tf.addfile(info, io.BytesIO(data))
    return _write_gzip(raw, path)


def setup_small(t: Target) -> None:
    path = t.base / "snap-small-files.tar.gz"
    digest, size = _make_small_files(path)
    with open(path, "rb") as f:
        subprocess.run([CTR, "--address", t.address, "-n", NS, "content", "ingest", "--expected-digest", digest,
                        "--expected-size", str(size), "bench-" + uuid.uuid4().hex], stdin=f, check=True,
                       capture_output=True)
    t.ctr("content", "label", digest, "containerd.io/gc.root=bench", namespace=NS, check=True)
    _layers[t.name + "/small"] = [(digest, size)]


def teardown_small(t: Target) -> None:
    for digest, _ in _layers.pop(t.name + "/small", []):
        t.ctr("content", "rm", digest, namespace=NS)


def apply_small(t: Target) -> float:
    grpc, dpb, dgrpc, spb, sgrpc, descpb = _stubs()
    md = [("containerd-namespace", NS)]
    key = "small-" + uuid.uuid4().hex[:8]
    digest, size = _layers[t.name + "/small"][0]
    with grpc.insecure_channel(f"unix://{t.address}") as ch:
        snaps, diff = sgrpc.SnapshotsStub(ch), dgrpc.DiffStub(ch)
        mounts = snaps.Prepare(spb.PrepareSnapshotRequest(snapshotter="overlayfs", key=key, labels=ROOT),
                               metadata=md).mounts
        started = time.perf_counter()
        diff.Apply(dpb.ApplyRequest(diff=descpb.Descriptor(media_type=GZIP, digest=digest, size=size),
                                    mounts=mounts), metadata=md, timeout=600)
        elapsed = time.perf_counter() - started
        snaps.Remove(spb.RemoveSnapshotRequest(snapshotter="overlayfs", key=key), metadata=md)
    return elapsed


def workloads() -> list[Workload]:
    return [
        Workload("snapshots.prepare_commit", prepare_commit, repeat=5),
        Workload("snapshots.prepare_commit python-grpc floor", prepare_commit_floor, repeat=5,
                 targets=("flotilla",)),
        Workload("snapshots.apply_4x64MiB", apply_layers, repeat=3, setup=setup_layers, teardown=teardown_layers),
        Workload("snapshots.apply_10k_files", apply_small, repeat=3, setup=setup_small, teardown=teardown_small),
    ]
