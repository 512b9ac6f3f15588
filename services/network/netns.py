"""A task's network namespace, held by a bind mount while it is attached.

The plugins are given the held file, never ``/proc/<pid>/ns/net``: a DEL must still find
the namespace after the task's process is gone (the bridge plugin skips its masquerade
rules when the namespace has vanished, and they would stay), and a pid may be reused by
another process by then. A process is known by its pid and its start time, so a reused
pid is never taken for the task's.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from flotilla.libs.api.types import Mount
from flotilla.libs.mount import mount, unmount


def start_time(pid: int) -> int | None:
    """The process' start time in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    None when there is no such process (or only its zombie: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, started: int) -> bool:
    return pid > 0 and start_time(pid) == started


def same_namespace(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def is_host_namespace(path: str) -> bool:
    """Whether ``path`` is this service's own (the host's) network namespace."""
    return same_namespace(path, "/proc/self/ns/net")


def is_pinned(path: Path) -> bool:
    """Whether a namespace is mounted on ``path`` (its device is nsfs', not the directory's)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def pin(pid: int, path: Path) -> None:
    """Hold process ``pid``'s network namespace on ``path`` (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_pinned(path):
        return
    path.touch(exist_ok=True)
    mount(Mount("bind", f"/proc/{pid}/ns/net", options=["bind"]), str(path))


def unpin(path: Path) -> None:
    """Release the namespace held on ``path`` and remove the file (blocking, idempotent)."""
    for _ in range(8):  # a file may be mounted over more than once
        if not is_pinned(path):
            break
        try:
            unmount(str(path))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                unmount(str(path), lazy=True)
            elif exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
