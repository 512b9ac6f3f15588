"""A task's standard streams through FIFOs, as containerd's cio does.

The FIFOs live in a private temporary directory; the server (its shim) opens them by path.
We open our ends before the task is created and hold a spare write end of stdout/stderr
until the task has started, so an early read never sees a premature end of file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

Write = Callable[[bytes], None]


def _stdout_writer(stream: BinaryIO) -> Write:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()
    return write


@dataclass
class FifoSet:
    """Paths handed to the server, our ends, and the copy tasks."""
    dir: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    _fds: list[int] = field(default_factory=list)
    _spare: list[int] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @staticmethod
    def create(id: str, *, stdin: bool = False, stdout: bool = True, stderr: bool = True,
               terminal: bool = False) -> "FifoSet":
        d = tempfile.mkdtemp(prefix=f"flotilla-io-{id}-")
        fs = FifoSet(d, terminal=terminal)
        for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr and not terminal)):
            if wanted:
                path = os.path.join(d, f"{id}-{name}")
                os.mkfifo(path, 0o600)
                setattr(fs, name, path)
        return fs

    def start_copy(self, out: Write | None = None, err: Write | None = None,
                   input: "asyncio.StreamReader | bytes | None" = None) -> None:
        """Begin copying stdout/stderr to ``out``/``err`` and ``input`` to stdin."""
        loop = asyncio.get_running_loop()
        out = out or _stdout_writer(sys.stdout.buffer)
        err = err or _stdout_writer(sys.stderr.buffer)
        for path, sink in ((self.stdout, out), (self.stderr, err)):
            if not path:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            self._spare.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            self._fds.append(fd)
            self._tasks.append(loop.create_task(self._pump(fd, sink)))
        if self.stdin:
            self._tasks.append(loop.create_task(self._feed(input)))

    def started(self) -> None:
        """The server holds its ends now: drop our spare writers so EOF means the task is done."""
        for fd in self._spare:
            os.close(fd)
        self._spare.clear()

    async def _pump(self, fd: int, sink: Write) -> None:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    return
                sink(data)
        finally:
            loop.remove_reader(fd)

    async def _feed(self, source: "asyncio.StreamReader | bytes | None") -> None:
        # opening for writing blocks until the server opens its reading end
        fd = await asyncio.to_thread(os.open, self.stdin, os.O_WRONLY)
        try:
            if isinstance(source, bytes):
                await asyncio.to_thread(os.write, fd, source)
            elif source is not None:
                while chunk := await source.read(65536):
                    await asyncio.to_thread(os.write, fd, chunk)
        except (BrokenPipeError, OSError):
            pass
        finally:
            os.close(fd)

    async def wait(self) -> None:
        """Until stdout and stderr reach end of file (the task's writers closed)."""
        pumps = [t for t in self._tasks if t.get_coro().__name__ == "_pump"]  # type: ignore[union-attr]
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)

    def close(self) -> None:
        self.started()
        for t in self._tasks:
            t.cancel()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
