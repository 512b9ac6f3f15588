"""Direct (page-cache bypassing) appends and reads give the same bytes as plain ones,
for any piece sizes, on a filesystem with O_DIRECT and on one without (tmpfs)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.libs import directio
from flotilla.libs.directio import ALIGN, CACHED_HEAD, WRITEBACK_PIECE, Appender, FileReader, Reader, open_direct

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
        app = Appender(str(path), start, stage=1 << 20, cached_head=0)
        direct = app.dfd >= 0
        for piece in pieces:
            written = app.append(piece)
            assert written <= start + sum(map(len, pieces))
            assert written % ALIGN == 0 or not direct or written == start
        app.flush()
        app.append(b"after the flush")  # unaligned now: goes through the cache
        app.close()
        assert path.read_bytes() == head + b"".join(pieces) + b"after the flush"


def test_direct_is_used_where_the_filesystem_has_it(tmp_path: Path) -> None:
    fd = open_direct(str(tmp_path / "probe"), os.O_WRONLY | os.O_CREAT)
    if fd < 0:
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(fd)
    app = Appender(str(tmp_path / "probe"), 0, cached_head=0)
    assert app.dfd >= 0 and app.buf is not None
    assert app.append(b"x" * (ALIGN + 1)) == ALIGN  # the aligned part is on the file already
    assert app.flush() == ALIGN + 1
    app.close()


def test_reader_hashes_like_a_plain_read(roots: list[Path]) -> None:
    for root in roots:
        path = root / "blob"
        data = os.urandom((3 << 20) + 123)
        path.write_bytes(data)
        reader = Reader(str(path), 1 << 20, cached_head=0)
        fd = os.open(path, os.O_RDONLY)
        h, offset = hashlib.sha256(), 0
        while offset < len(data):
            view = reader.read_into(fd, offset, len(data) - offset)
            piece = bytes(view) if view is not None else os.pread(fd, 1 << 20, offset)
            assert piece, "no progress"
            h.update(piece)
            offset += len(piece)
        os.close(fd)
        reader.close()
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        assert reader.read_into(0, 0, 10) is None  # closed: the caller reads itself


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
    every reader and writer goes on through the cache without losing a byte."""
    fd = open_direct(str(tmp_path / "probe"), os.O_WRONLY | os.O_CREAT)
    if fd < 0:
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(fd)
    direct: set[int] = set()
    real_pwrite, real_preadv = os.pwrite, os.preadv

    def pwrite(fd: int, data: object, offset: int) -> int:
        if fd in direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)  # type: ignore[arg-type]

    def preadv(fd: int, buffers: list[object], offset: int) -> int:
        if fd in direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "preadv", preadv)
    data = os.urandom((3 << 20) + 77)
    (tmp_path / "data").touch()  # the service makes an ingest's data file before any write
    app = Appender(str(tmp_path / "data"), 0, stage=1 << 20, cached_head=0)
    direct.add(app.dfd)
    for start in range(0, len(data), 700_000):
        app.append(data[start:start + 700_000])
    assert app.buf is None  # gave up on direct I/O
    app.close()
    assert (tmp_path / "data").read_bytes() == data

    with FileReader(str(tmp_path / "data"), piece=1 << 20, cached_head=0) as r:
        direct.add(r.dfd)
        got = b"".join(iter(lambda: r.read(1 << 20), b""))
    assert got == data

    reader = Reader(str(tmp_path / "data"), 1 << 20, cached_head=0)
    direct.add(reader.dfd)
    assert reader.read_into(0, 0, 100) is None and reader.buf is None
    reader.close()


def test_the_head_of_a_file_goes_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes before the head are written and read through the cache (a small blob is read
    again at once by its unpack); only bytes past it use the direct descriptor."""
    fd = open_direct(str(tmp_path / "probe"), os.O_WRONLY | os.O_CREAT)
    if fd < 0:
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(fd)
    head = 1 << 20
    direct: set[int] = set()
    direct_offsets: list[int] = []
    real_pwrite, real_preadv = os.pwrite, os.preadv

    def pwrite(fd: int, data: object, offset: int) -> int:
        if fd in direct:
            direct_offsets.append(offset)
        return real_pwrite(fd, data, offset)  # type: ignore[arg-type]

    def preadv(fd: int, buffers: list[object], offset: int) -> int:
        if fd in direct:
            direct_offsets.append(offset)
        return real_preadv(fd, buffers, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "preadv", preadv)
    data = os.urandom(3 * head + 5)
    (tmp_path / "data").touch()
    app = Appender(str(tmp_path / "data"), 0, stage=head, cached_head=head)
    direct.add(app.dfd)
    for start in range(0, len(data), 300_000):
        app.append(data[start:start + 300_000])
    app.close()
    assert direct_offsets and min(direct_offsets) >= head
    assert (tmp_path / "data").read_bytes() == data

    direct_offsets.clear()
    direct.clear()  # closed descriptors' numbers come back
    with FileReader(str(tmp_path / "data"), piece=head, cached_head=head) as r:
        direct.add(r.dfd)
        got = b"".join(iter(lambda: r.read(200_000), b""))
    assert got == data and direct_offsets and min(direct_offsets) >= head

    direct_offsets.clear()
    direct.clear()  # closed descriptors' numbers come back
    reader = Reader(str(tmp_path / "data"), head, cached_head=head)
    direct.add(reader.dfd)
    fd = os.open(tmp_path / "data", os.O_RDONLY)
    view = reader.read_into(fd, 0, len(data))
    assert view is not None and bytes(view) == data[:head] and not direct_offsets
    os.close(fd)
    reader.close()

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
