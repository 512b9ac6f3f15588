"""crun run from a sealed in-memory copy of itself.

Every crun command first checks that the binary it runs from is a sealed memfd; when it is
not, it makes a read-only copy of itself and executes again (CVE-2019-5736: a container must
never be able to rewrite the host's binary through /proc/self/exe). That second exec and
dynamic link cost 2-3 ms of each start, exec, kill and delete here. The service keeps one
copy sealed as crun seals its own (no writes, no growing or shrinking, no further seals), so
the protection is the same, and runs crun from it through ``/proc/<service pid>/fd/<n>``.

runc clones itself only in its container init, so sealing it buys nothing: it runs as is.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

SEALABLE = frozenset({"crun"})
_F_ADD_SEALS = 1033  # F_LINUX_SPECIFIC_BASE + 9
_SEALS = 0x1 | 0x2 | 0x4 | 0x8  # F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE

_lock = threading.Lock()
# binary path -> (its identity when copied, the sealed copy's descriptor)
_copies: dict[str, tuple[tuple[int, int, int, int], int]] = {}


def _seal(path: str) -> int:
    fd = os.memfd_create(Path(path).name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(path, "rb") as src:
            view = memoryview(src.read())
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _proc_path(fd: int) -> str:
    return f"/proc/{os.getpid()}/fd/{fd}"


def exec_path(path: str) -> str:
    """Where to execute the runtime ``path`` from: its sealed copy (made now if the binary is
    new or changed since), or ``path`` itself. Blocking: call it on a worker thread."""
    if Path(path).name not in SEALABLE:
        return path
    try:
        st = os.stat(path)
    except OSError:
        return path
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        held = _copies.get(path)
        if held is None or held[0] != identity:
            try:
                fd = _seal(path)
            except OSError:
                return path
            # a replaced copy stays open: a command may be starting from it right now
            held = _copies[path] = (identity, fd)
    return _proc_path(held[1])


def known_path(path: str) -> str:
    """``exec_path`` without looking at the disk: the last sealed copy of ``path`` (a
    later ``exec_path`` notices a changed binary), or ``path`` itself."""
    held = _copies.get(path)
    return _proc_path(held[1]) if held is not None else path
