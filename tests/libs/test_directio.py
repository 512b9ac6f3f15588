"""Appends and direct (page-cache bypassing) reads give the same bytes as plain ones, for
any piece sizes, on a filesystem with O_DIRECT and on one without (tmpfs); hashed ingest
bytes leave the cache behind the hash."""

from __future__ import annotations

import errno
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.libs import directio
from flotilla.libs.directio import (ALIGN, CACHED_HEAD, DROP_PIECE, WRITEBACK_PIECE, Appender, DropBehind,
                                   FileReader, open_direct, read_cached)
from flotilla.testing.pagecache import PAGE, cached_pages

SIZES = [1, ALIGN - 1, ALIGN, 3 * ALIGN + 7, 1 << 20, (4 << 20) + 5, 100, 9 << 20, 17]


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[list[Path]]:
    """A disk directory and, where there is one, a tmpfs one (no O_DIRECT there)."""
    if not Path("/dev/shm").is_dir():
        yield [tmp_path]
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        yield [tmp_path, Path(shm)]


@pytest.mark.parametrize("start", [0, ALIGN * 3, 5])
def test_appends_of_any_size_land_in_order(roots: list[Path], start: int) -> None:
    rng = random.Random(start)
    for root in roots:
        path = root / f"data-{start}"
        head = os.urandom(start)
        path.write_bytes(head)
        pieces = [rng.randbytes(n) for n in SIZES]
        app = Appender(str(path), start)
        for i, piece in enumerate(pieces):
            assert app.append(piece) == start + sum(map(len, pieces[:i + 1]))  # on the file at once
        app.close()
        assert path.read_bytes() == head + b"".join(pieces)


def test_cached_reads_hash_like_a_plain_read(roots: list[Path]) -> None:
    for root in roots:
        path = root / "blob"
        data = os.urandom((3 << 20) + 123)
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        got, offset = [], 0
        while view := read_cached(fd, offset, len(data) - offset):
            got.append(bytes(view))
            offset += len(view)
        os.close(fd)
        assert b"".join(got) == data and max(map(len, got)) <= 1 << 20


def test_file_reader_reads_any_piece_sizes(roots: list[Path]) -> None:
    for root in roots:
        data = os.urandom((2 << 20) + 999)
        (root / "blob").write_bytes(data)
        got = []
        with FileReader(str(root / "blob"), piece=1 << 20, cached_head=0) as r:
            assert r.read(4) == data[:4]  # a header first, as the decompressor reads it
            got.append(data[:4])
            sizes = iter([1, 4095, 1 << 20, 77, 3 << 20])
            while piece := r.read(next(sizes, 1 << 20)):
                got.append(piece)
            assert r.read(10) == b""
        assert b"".join(got) == data


def test_a_device_refusing_our_alignment_falls_back_to_the_cache(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Some devices want more than page alignment: direct I/O then fails with EINVAL, and
    the reader goes on through the cache without losing a byte."""
    fd = open_direct(str(tmp_path / "probe"), os.O_WRONLY | os.O_CREAT)
    if fd < 0:
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(fd)
    direct: set[int] = set()
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[object], offset: int) -> int:
        if fd in direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "preadv", preadv)
    data = os.urandom((3 << 20) + 77)
    (tmp_path / "data").write_bytes(data)
    with FileReader(str(tmp_path / "data"), piece=1 << 20, cached_head=0) as r:
        direct.add(r.dfd)
        got = b"".join(iter(lambda: r.read(1 << 20), b""))
    assert got == data and r.buf is None  # gave up on direct I/O


def test_the_head_of_a_file_is_read_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes before the head are read through the cache (a small blob is read again at once
    by its unpack, and its ingest kept it cached); only bytes past it are read direct."""
    fd = open_direct(str(tmp_path / "probe"), os.O_WRONLY | os.O_CREAT)
    if fd < 0:
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(fd)
    head = 1 << 20
    direct: set[int] = set()
    direct_offsets: list[int] = []
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[object], offset: int) -> int:
        if fd in direct:
            direct_offsets.append(offset)
        return real_preadv(fd, buffers, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "preadv", preadv)
    data = os.urandom(3 * head + 5)
    (tmp_path / "data").write_bytes(data)
    with FileReader(str(tmp_path / "data"), piece=head, cached_head=head) as r:
        direct.add(r.dfd)
        got = b"".join(iter(lambda: r.read(200_000), b""))
    assert got == data and direct_offsets and min(direct_offsets) >= head

    (tmp_path / "small").write_bytes(data[:CACHED_HEAD // 2])
    with FileReader(str(tmp_path / "small")) as r:
        assert r.dfd < 0 and r.buf is None  # a file within the head never opens a direct descriptor
        assert b"".join(iter(lambda: r.read(1 << 20), b"")) == data[:CACHED_HEAD // 2]


def test_cached_bytes_go_to_the_disk_as_they_come(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each WRITEBACK_PIECE of cached bytes has its writeback started at once, in order and
    without gaps, so the commit's fsync finds little left to write."""
    handed: list[tuple[int, int, bool]] = []
    real = directio.start_writeback

    def spy(fd: int, offset: int, size: int) -> bool:
        started = real(fd, offset, size)
        handed.append((offset, size, started))
        return started
    monkeypatch.setattr(directio, "start_writeback", spy)
    data = os.urandom(10 * 100_000 + 7)
    (tmp_path / "data").touch()
    app = Appender(str(tmp_path / "data"), 0)
    for start in range(0, len(data), 100_000):
        app.append(data[start:start + 100_000])
    app.close()
    assert (tmp_path / "data").read_bytes() == data
    assert all(started for _, _, started in handed)  # Linux: sync_file_range took them
    assert [offset for offset, _, _ in handed] == [sum(n for _, n, _ in handed[:i]) for i in range(len(handed))]
    assert all(n >= WRITEBACK_PIECE for _, n, _ in handed)
    assert len(data) - sum(n for _, n, _ in handed) < WRITEBACK_PIECE


def test_hashed_bytes_leave_the_cache_behind_the_hash(tmp_path: Path) -> None:
    """Past the head, what the reader passed (by the lag) is dropped once on the disk, so
    the writer's next bytes reuse its pages; after the fsync, all of it. The head stays."""
    head, lag = 1 << 20, 2 << 20
    path = tmp_path / "data"
    path.touch()
    app = Appender(str(path), 0)
    behind = DropBehind(head, lag)
    fd = os.open(path, os.O_RDONLY)
    try:
        total = 12 << 20
        for offset in range(0, total, 1 << 20):
            app.append(os.urandom(1 << 20))
            behind.passed(fd, offset + (1 << 20))
        assert cached_pages(str(path), 0, head) == head // PAGE
        dropped = cached_pages(str(path), head, total - lag - DROP_PIECE)
        assert dropped == 0, f"{dropped} pages still cached"
        assert cached_pages(str(path), total - lag, total) > 0  # the lag: writeback may be under way
        os.fsync(app.fd)
        behind.synced(fd, total)
        assert cached_pages(str(path), head, total) == 0
        assert cached_pages(str(path), 0, head) == head // PAGE
    finally:
        os.close(fd)
        app.close()
