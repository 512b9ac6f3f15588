"""Bulk blob bytes with few fresh pages in the page cache, and past it where read once.

Why: on VMs whose free memory the host reclaims, every fresh page-cache page costs a
fault in the host; writing a 1 GiB ingest through the cache cost ~3 ms of system time
per MiB here. A page freed and taken again at once costs nothing more.

Ingest data goes through the cache (``Appender``), its writeback started as it comes
(``sync_file_range``, asynchronous): the commit's ``fsync`` then waits for little (1.2-3.6
ms for a 1 MiB layer in a pull here, 0.2 ms with this) and holds up no other fsync of that
journal commit (ext4's ordered mode flushes all such data with it). The content service
hashes those bytes from the cache, and past the file's first ``CACHED_HEAD`` bytes drops
them once they are on the disk (``DropBehind``): the next bytes reuse those pages, and the
hash never reads the disk. Before, the ingest was written past the cache (``O_DIRECT``) and
read back from the disk to hash it: in a ``flotilla pull`` of four 64 MiB layers the disk
was then the bottleneck (95-100% busy while the layers came in, the CPUs half idle); the
pull now takes 0.82-0.89 of that time (docs/content.md).

The head stays cached: small blobs (manifests, configs, small layers) are read again at
once by their unpack, and there the cache wins by far (1 MiB here: read 0.1 ms cached,
5.0 ms direct). A layer's unpack reads past the head directly (``FileReader``).

``O_DIRECT`` wants buffers, offsets and lengths aligned to the block size: direct reads
start at aligned offsets, into an aligned buffer, and only the file's end makes one short.
Filesystems without ``O_DIRECT`` (tmpfs) simply use the cache throughout. Objects here are
confined to one thread (the caller's disk thread).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading

ALIGN = 4096
CACHED_HEAD = 16 << 20  # a multiple of ALIGN
_DIRECT = getattr(os, "O_DIRECT", 0)
_READ_PIECE = 1 << 20
_per_thread = threading.local()
WRITEBACK_PIECE = 256 << 10  # cached bytes handed to the disk at a time
DROP_LAG = 8 << 20           # bytes kept cached behind the hash (their writeback may be under way)
DROP_PIECE = 4 << 20         # bytes dropped at a time
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_ALL = 1 | 2 | 4  # wait for writeback before, write, wait after


def _libc_sync_file_range():  # type: ignore[no-untyped-def]
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: the fsync does it all
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _libc_sync_file_range()


def start_writeback(fd: int, offset: int, size: int) -> bool:
    """Start writing ``size`` cached bytes at ``offset`` to the disk; does not wait.
    False where the system cannot (the next fsync writes them all)."""
    return _sync_file_range is not None and _sync_file_range(fd, offset, size, _SYNC_FILE_RANGE_WRITE) == 0


def _read_buffer() -> memoryview:
    """This thread's buffer for cached reads, kept across files: a fresh one costs a page
    fault per page touched (hashing 1 MiB took 2.2 ms with a fresh buffer, 1.4 ms with
    this one)."""
    buf = getattr(_per_thread, "read", None)
    if buf is None:
        buf = _per_thread.read = memoryview(bytearray(_READ_PIECE))
    return buf


def read_cached(fd: int, offset: int, size: int) -> memoryview:
    """Up to ``size`` bytes at ``offset`` (at most 1 MiB), through the cache into this
    thread's buffer: valid until this thread's next call; empty at the file's end."""
    buf = _read_buffer()
    n = os.preadv(fd, [buf[:min(size, len(buf))]], offset)
    return buf[:n]


class DropBehind:
    """Drops a file's cached bytes past ``head`` once its reader is ``DROP_LAG`` past them
    and they are on the disk, so the next bytes written reuse those pages (see above)."""

    def __init__(self, head: int = CACHED_HEAD, lag: int = DROP_LAG) -> None:
        self.dropped = head  # cached bytes from here on may remain
        self.lag = lag

    def passed(self, fd: int, offset: int) -> None:
        """The reader has every byte before ``offset``."""
        end = (offset - self.lag) // ALIGN * ALIGN
        if end - self.dropped >= DROP_PIECE:
            self._drop(fd, end, wait=True)

    def synced(self, fd: int, end: int) -> None:
        """After an fsync: every cached byte past the head is clean, drop them all."""
        if end > self.dropped:
            self._drop(fd, end, wait=False)

    def _drop(self, fd: int, end: int, wait: bool) -> None:
        size = end - self.dropped
        if wait and _sync_file_range is not None:  # pages under writeback would stay
            _sync_file_range(fd, self.dropped, size, _SYNC_FILE_RANGE_WAIT_ALL)
        os.posix_fadvise(fd, self.dropped, size, os.POSIX_FADV_DONTNEED)
        self.dropped = end


def open_direct(path: str, flags: int) -> int:
    """An ``O_DIRECT`` descriptor of ``path``, or -1 where the filesystem refuses it."""
    if not _DIRECT:
        return -1
    try:
        return os.open(path, flags | _DIRECT)
    except OSError:
        return -1


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Appender:
    """Appends to a file from ``offset`` on, through the cache, handing the bytes to the
    disk as they come."""

    def __init__(self, path: str, offset: int) -> None:
        self.fd = os.open(path, os.O_RDWR)  # readable: see Writer.committed_file
        self.written = offset  # the file holds every byte before this
        self.handed = offset   # cached bytes before this went to the disk (start_writeback)

    def append(self, data: bytes | memoryview) -> int:
        """Returns how far the file holds the bytes."""
        _pwrite_all(self.fd, memoryview(data), self.written)
        self.written += len(data)
        if self.written - self.handed >= WRITEBACK_PIECE:
            start_writeback(self.fd, self.handed, self.written - self.handed)
            self.handed = self.written
        return self.written

    def close(self) -> None:
        os.close(self.fd)


class FileReader:
    """A whole file read front to back, past the cache beyond its head (a layer blob, read
    once by its unpack, whose bytes past the head the ingest dropped from the cache):
    ``read`` as a raw file's, served from aligned direct reads into an aligned buffer;
    through the cache where the filesystem refuses direct I/O."""

    def __init__(self, path: str, piece: int = 4 << 20, cached_head: int = CACHED_HEAD) -> None:
        assert cached_head % ALIGN == 0
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.head = cached_head  # bytes before this offset are read through the cache
        big = os.fstat(self.fd).st_size > cached_head
        self.dfd = open_direct(path, os.O_RDONLY | os.O_CLOEXEC) if big else -1
        self.buf = mmap.mmap(-1, piece) if self.dfd >= 0 else None  # mmap memory is page aligned
        self.offset = 0             # the next byte to hand out
        self.start = self.end = 0   # the file range the buffer holds

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = max(0, os.fstat(self.fd).st_size - self.offset)
        if self.offset < self.head:
            data = os.pread(self.fd, min(n, self.head - self.offset), self.offset)
            self.offset += len(data)
            return data
        if self.buf is not None and not self.start <= self.offset < self.end:
            self.start = self.offset - self.offset % ALIGN
            try:
                self.end = self.start + os.preadv(self.dfd, [self.buf], self.start)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._stop_direct()  # more alignment wanted than a page: read cached
        if self.buf is None:
            data = os.pread(self.fd, n, self.offset)
        elif self.offset >= self.end:
            return b""
        else:
            at = self.offset - self.start
            data = self.buf[at:at + min(n, self.end - self.offset)]
        self.offset += len(data)
        return data

    def _stop_direct(self) -> None:
        if self.dfd >= 0:
            os.close(self.dfd)
            self.dfd = -1
        if self.buf is not None:
            _unmap(self.buf)
            self.buf = None

    def close(self) -> None:
        self._stop_direct()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "FileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unmap(buf: mmap.mmap) -> None:
    try:
        buf.close()
    except BufferError:  # a caller still holds a view: the collector unmaps it later
        pass
