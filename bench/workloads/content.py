"""Issue 3's figures: `ctr content ingest` and `ctr content get` of 1 GiB (MB/s, Flotilla and
containerd), the limits of this machine (sha256 speed, disk write speed), and the
NATS byte path (bytes between hosts) through the contract's client.

ctr's input is a file (a pipe would cap each Write at the pipe's 64 KiB), its output
/dev/null (the reader is measured, not the disk).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

from flotilla.testing import CTR

from ..harness import Target, Workload
from ..nullgrpc import against

MiB = 1 << 20
SIZE = 1024 * MiB        # the 1 GiB
NATS_SIZE = 256 * MiB    # the NATS path at a quarter of that keeps the run bounded
BLOCK = 8 * MiB
NS = "bench-content"


def _source(t: Target, size: int | None = None) -> tuple[Path, str]:
    """A file of random bytes (made once per target) and its digest."""
    size = size or SIZE
    path = t.base / f"content-{size // MiB}MiB"
    digest_file = path.with_suffix(".digest")
    if not digest_file.exists():
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for _ in range(size // BLOCK):
                block = os.urandom(BLOCK)
                h.update(block)
                f.write(block)
        digest_file.write_text("sha256:" + h.hexdigest())
    return path, digest_file.read_text()


def _mbs(size: int, seconds: float) -> float:
    return size / 1e6 / seconds


def _ingest(t: Target, path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb") as f:
        subprocess.run([CTR, "--address", t.address, "-n", NS, "content", "ingest", "bench-" + uuid.uuid4().hex],
                       stdin=f, check=True, capture_output=True)
    return time.perf_counter() - started


def ingest(t: Target) -> float:
    path, digest = _source(t)
    seconds = _ingest(t, path)
    t.ctr("content", "rm", digest, namespace=NS)  # the next iteration writes it anew
    return _mbs(SIZE, seconds)


def ingest_floor(t: Target) -> float:
    """The same ingest against a gRPC server that only counts the bytes (bench/nullgrpc.py)."""
    path, _ = _source(t)
    return against(t, path, lambda floor: _mbs(SIZE, _ingest(floor, path)))


def get_setup(t: Target) -> None:
    path, digest = _source(t)
    t.ctr("content", "rm", digest, namespace=NS)
    _ingest(t, path)


def get(t: Target) -> float:
    _, digest = _source(t)
    started = time.perf_counter()
    with open(os.devnull, "wb") as out:
        subprocess.run([CTR, "--address", t.address, "-n", NS, "content", "get", digest], stdout=out, check=True)
    return _mbs(SIZE, time.perf_counter() - started)


def get_floor(t: Target) -> float:
    """The same `ctr content get` against a gRPC server that only reads the file
    (bench/nullgrpc.py): what Python's gRPC alone costs for ctr's one call per 32 KiB."""
    return against(t, _source(t)[0], get)


def grpc_read(t: Target) -> float:
    """One Read call over the whole blob (a client reading big ranges, as a puller or
    differ does); `ctr content get` instead asks one Read call per 32 KiB (Go's
    File.ReadFrom bypasses ctr's 1 MiB buffer), so it measures per-call latency."""
    import grpc

    from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
    from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbc_grpc
    _, digest = _source(t)
    with grpc.insecure_channel(f"unix://{t.address}",
                               options=[("grpc.max_receive_message_length", 16 << 20)]) as ch:
        stub = pbc_grpc.ContentStub(ch)
        started = time.perf_counter()
        n = sum(len(r.data) for r in stub.Read(pbc.ReadContentRequest(digest=digest),
                                               metadata=[("containerd-namespace", NS)]))
        seconds = time.perf_counter() - started
    assert n == SIZE, (n, SIZE)
    return _mbs(SIZE, seconds)


def get_teardown(t: Target) -> None:
    t.ctr("content", "rm", _source(t)[1], namespace=NS)


def sha256_limit(t: Target) -> float:
    """hashlib's sha256 over the source (in the page cache), as the content service hashes."""
    path, _ = _source(t)
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return _mbs(SIZE, time.perf_counter() - started)


def disk_write_limit(t: Target) -> float:
    """Writing 1 GiB to the data root's disk, fsync included (what a commit makes durable)."""
    block = os.urandom(BLOCK)
    path = t.base / "disk-write-probe"
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(SIZE // BLOCK):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    return _mbs(SIZE, seconds)


def nats_write(t: Target) -> float:
    """Bytes between hosts: write_blob with the client forced onto NATS chunks."""
    from flotilla.libs.api.content import ContentClient
    suite = t.handle.suite  # type: ignore[attr-defined]
    path, digest = _source(t, NATS_SIZE)

    async def go() -> float:
        bus = await t.handle.bus("bench")  # type: ignore[attr-defined]
        try:
            c = ContentClient(bus, suite.prefix, local=False)

            async def chunks():  # type: ignore[no-untyped-def]
                with open(path, "rb") as f:
                    while piece := await asyncio.to_thread(f.read, BLOCK):
                        yield piece
            started = time.perf_counter()
            await c.write_blob(NS, "nats-" + uuid.uuid4().hex, chunks(), expected=digest, total=NATS_SIZE)
            seconds = time.perf_counter() - started
            await c.delete(NS, digest)
            return seconds
        finally:
            await bus.close()
    return _mbs(NATS_SIZE, asyncio.run(go()))


def nats_read(t: Target) -> float:
    from flotilla.libs.api.content import ContentClient
    suite = t.handle.suite  # type: ignore[attr-defined]
    path, digest = _source(t, NATS_SIZE)

    async def go() -> float:
        bus = await t.handle.bus("bench")  # type: ignore[attr-defined]
        try:
            c = ContentClient(bus, suite.prefix, local=False)
            with open(path, "rb") as f:
                await c.write_blob(NS, "nats-read", f.read(), expected=digest, total=NATS_SIZE)
            started = time.perf_counter()
            n = 0
            async for piece in c.read(NS, digest):
                n += len(piece)
            seconds = time.perf_counter() - started
            assert n == NATS_SIZE
            await c.delete(NS, digest)
            return seconds
        finally:
            await bus.close()
    return _mbs(NATS_SIZE, asyncio.run(go()))


def workloads() -> list[Workload]:
    return [
        Workload("content-limit-sha256-1GiB", sha256_limit, repeat=3, unit="MB/s",
                 targets=("flotilla",), higher_is_better=True),
        Workload("content-limit-disk-write-1GiB", disk_write_limit, repeat=3, unit="MB/s",
                 targets=("flotilla",), higher_is_better=True),
        Workload("content-ctr-ingest-1GiB", ingest, repeat=3, unit="MB/s", higher_is_better=True),
        Workload("content-ctr-ingest-1GiB python-grpc floor", ingest_floor, repeat=3, unit="MB/s",
                 targets=("flotilla",), higher_is_better=True),
        Workload("content-ctr-get-1GiB", get, repeat=3, unit="MB/s", higher_is_better=True,
                 setup=get_setup, teardown=get_teardown),
        Workload("content-ctr-get-1GiB python-grpc floor", get_floor, repeat=3, unit="MB/s",
                 targets=("flotilla",), higher_is_better=True),
        Workload("content-grpc-read-1GiB", grpc_read, repeat=3, unit="MB/s", higher_is_better=True,
                 setup=get_setup, teardown=get_teardown),
        Workload("content-nats-write-256MiB", nats_write, repeat=3, unit="MB/s",
                 targets=("flotilla",), higher_is_better=True),
        Workload("content-nats-read-256MiB", nats_read, repeat=3, unit="MB/s",
                 targets=("flotilla",), higher_is_better=True),
    ]
