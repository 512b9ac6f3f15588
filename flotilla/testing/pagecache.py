"""How much of a file the page cache holds (``mincore``), for tests of what stays cached."""

from __future__ import annotations

import ctypes
import mmap
import os

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def cached_pages(path: str, start: int = 0, end: int = -1) -> int:
    """How many pages of ``path`` in [start, end) the page cache holds."""
    size = os.path.getsize(path)
    end = size if end < 0 else min(end, size)
    start -= start % PAGE
    if end <= start:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        # a private mapping: writable for ctypes, and untouched pages are the cache's own
        m = mmap.mmap(fd, end - start, access=mmap.ACCESS_COPY, offset=start)
    finally:
        os.close(fd)
    try:
        pages = (end - start + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * pages)()
        anchor = ctypes.c_char.from_buffer(m)
        try:
            if _libc.mincore(ctypes.addressof(anchor), end - start, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del anchor
        return sum(v & 1 for v in vec)
    finally:
        m.close()
