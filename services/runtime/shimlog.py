"""A task's log pipe, as containerd's runtime v2 keeps one: ``<bundle>/log``, a FIFO whose
bytes the daemon copies to its own stderr, opened again for every task it finds after a
restart (containerd's client suite writes into it to check just that). The read end is
opened read-write, so the pipe never reads as closed while no writer holds it."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "log"
PIECE = 64 << 10


def make(bundle: Path) -> None:
    """Create the task's pipe (blocking: called where the bundle is made)."""
    path = bundle / NAME
    try:
        if stat.S_ISFIFO(os.lstat(path).st_mode):
            return
        path.unlink()
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o600)


class ShimLogs:
    """The open pipes of the tasks this runtime holds, read on the event loop."""

    def __init__(self) -> None:
        self.fds: dict[Path, int] = {}

    def follow(self, bundle: Path) -> None:
        """Copy what comes through ``bundle``'s pipe to our stderr, from now on."""
        if bundle in self.fds:
            return
        try:
            make(bundle)
            fd = os.open(bundle / NAME, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:  # the task runs all the same; only its log is not followed
            log.warning("task log pipe of %s: %s", bundle, exc)
            return
        self.fds[bundle] = fd
        asyncio.get_running_loop().add_reader(fd, self._copy, fd)

    @staticmethod
    def _copy(fd: int) -> None:
        try:
            data = os.read(fd, PIECE)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()

    def forget(self, bundle: Path) -> None:
        fd = self.fds.pop(bundle, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for bundle in list(self.fds):
            self.forget(bundle)
