"""Open committed blob files for the gateway's Read, shared between calls.

ctr reads a blob as one Read call per 32 KiB, so each call must be cheap: the blob's
file stays open for a short while (the content service is asked again after ``TTL``;
a ``/content/delete`` event drops it at once), and a read that the page cache can serve
is done on the event loop with ``RWF_NOWAIT``, which never blocks: anything else goes
to a thread. A blob this gateway wrote itself is held from its commit: a pull reads each
manifest and config right after writing it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from flotilla.libs.api.content import LocalFile

TTL = 2.0
MAX_OPEN = 256
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


@dataclass
class OpenBlob:
    fd: int
    size: int
    opened: float = field(default_factory=time.monotonic)
    users: int = 0
    dead: bool = False

    def release(self) -> None:
        self.users -= 1
        if self.dead and self.users == 0:
            os.close(self.fd)

    def kill(self) -> None:
        if not self.dead:
            self.dead = True
            if self.users == 0:
                os.close(self.fd)

    async def read(self, size: int, offset: int) -> bytes:
        if _NOWAIT and size <= 1 << 20:
            buf = bytearray(size)
            try:
                n = os.preadv(self.fd, [buf], offset, _NOWAIT)
                if n == size or offset + n >= self.size:
                    return bytes(memoryview(buf)[:n]) if n != size else bytes(buf)
            except BlockingIOError:
                pass  # not in the page cache: read it in a thread
        return await asyncio.to_thread(os.pread, self.fd, size, offset)


class BlobFiles:
    """(namespace, digest) -> an open blob file, or None when the blob is not local."""

    def __init__(self, resolve: Callable[[str, str], Awaitable[LocalFile | None]]) -> None:
        self.resolve = resolve
        self.entries: dict[tuple[str, str], OpenBlob | None] = {}
        self.when: dict[tuple[str, str], float] = {}

    def drop(self, ns: str, digest: str) -> None:
        self.when.pop((ns, digest), None)
        blob = self.entries.pop((ns, digest), None)
        if blob is not None:
            blob.kill()

    def keep(self, ns: str, digest: str, fd: int, size: int) -> None:
        """Hold ``fd`` (now ours) as the blob's open file: a blob just written is read next."""
        self.drop(ns, digest)
        self._make_room()
        self.entries[(ns, digest)], self.when[(ns, digest)] = OpenBlob(fd, size), time.monotonic()

    def _make_room(self) -> None:
        if len(self.entries) >= MAX_OPEN:
            for old in list(self.entries):
                self.drop(*old)

    async def acquire(self, ns: str, digest: str) -> OpenBlob | None:
        """The open blob (call ``release`` when done) or None; raises the service's NotFound."""
        key = (ns, digest)
        if key in self.entries and time.monotonic() - self.when[key] < TTL:
            blob = self.entries[key]
        else:
            self.drop(ns, digest)
            f = await self.resolve(ns, digest)
            blob = None
            if f is not None:
                try:
                    fd = await asyncio.to_thread(os.open, f.path, os.O_RDONLY)
                except FileNotFoundError:
                    fd = -1
                blob = OpenBlob(fd, f.size) if fd >= 0 else None
            self._make_room()
            self.drop(ns, digest)  # another call may have filled it meanwhile
            self.entries[key], self.when[key] = blob, time.monotonic()
        if blob is not None:
            blob.users += 1
        return blob

    def close(self) -> None:
        for key in list(self.entries):
            self.drop(*key)
