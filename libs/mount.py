"""Mounting containerd-style ``Mount`` records (shared by the snapshots and runtime services).

Mounts are made with the mount(2) and umount2(2) system calls, options split into flags and
data as containerd's ``parseMountOptions`` does: running mount(8) and umount(8) cost 4-5 ms a
pair here, on every container's create and delete, against 0.02 ms.

The kernel takes at most one page of mount data. A deep overlay chain has hundreds of
absolute ``lowerdir`` paths, so, as containerd does, the lowerdirs are made relative to
their longest common directory and the mount is made by a child whose working directory is
that directory (``mount(8)`` run with ``cwd``: a thread may not change the process' working
directory), leaving the Mount record itself unchanged.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Sequence
from typing import Protocol

PAGE = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096

_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS = 1, 2, 4, 8, 16
MS_REMOUNT, MS_MANDLOCK, MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME = 32, 64, 128, 1024, 2048
MS_BIND, MS_REC, MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 4096, 16384, 1 << 17, 1 << 18, 1 << 19, 1 << 20
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
MNT_DETACH = 2

# option -> (clear these flags, set these flags), as mount(8) and containerd read them
_FLAGS: dict[str, tuple[int, int]] = {
    "async": (MS_SYNCHRONOUS, 0), "atime": (MS_NOATIME, 0), "bind": (0, MS_BIND), "defaults": (0, 0),
    "dev": (MS_NODEV, 0), "diratime": (MS_NODIRATIME, 0), "dirsync": (0, MS_DIRSYNC), "exec": (MS_NOEXEC, 0),
    "mand": (0, MS_MANDLOCK), "noatime": (0, MS_NOATIME), "nodev": (0, MS_NODEV),
    "nodiratime": (0, MS_NODIRATIME), "noexec": (0, MS_NOEXEC), "nomand": (MS_MANDLOCK, 0),
    "norelatime": (MS_RELATIME, 0), "nostrictatime": (MS_STRICTATIME, 0), "nosuid": (0, MS_NOSUID),
    "rbind": (0, MS_BIND | MS_REC), "relatime": (0, MS_RELATIME), "remount": (0, MS_REMOUNT),
    "ro": (0, MS_RDONLY), "rw": (MS_RDONLY, 0), "strictatime": (0, MS_STRICTATIME), "suid": (MS_NOSUID, 0),
    "sync": (0, MS_SYNCHRONOUS),
}
_PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC, "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}


def parse_options(options: Sequence[str]) -> tuple[int, int, str]:
    """Mount flags, propagation flags and the data string (what no flag names)."""
    flags = propagation = 0
    data = []
    for o in options:
        if o in _FLAGS:
            clear, add = _FLAGS[o]
            flags = (flags & ~clear) | add
        elif o in _PROPAGATION:
            propagation |= _PROPAGATION[o]
        else:
            data.append(o)
    return flags, propagation, ",".join(data)


def _syscall_error(what: str) -> OSError:
    code = ctypes.get_errno()
    exc = OSError(f"{what}: {os.strerror(code)}")
    exc.errno = code
    return exc


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                   data.encode() if data else None) != 0:
        raise _syscall_error(f"mount {fstype or 'bind'} {source} on {target}")


class MountLike(Protocol):
    type: str
    source: str
    options: list[str]


def compact_lowerdirs(options: Sequence[str]) -> tuple[str, list[str]]:
    """Return (working dir, options) with lowerdirs relative to their common parent dir.

    ("", options) when there is nothing to gain (no or one lowerdir, no common dir).
    """
    idx = next((i for i, o in enumerate(options) if o.startswith("lowerdir=")), -1)
    if idx < 0:
        return "", list(options)
    dirs = options[idx][len("lowerdir="):].split(":")
    if len(dirs) < 2:
        return "", list(options)
    # step back to a whole directory above the per-snapshot ones (ids are digits, so a
    # common prefix may end inside an id)
    common = os.path.dirname(os.path.commonprefix(dirs))
    if common in ("", "/"):
        return "", list(options)
    prefix = common + "/"
    if not all(d.startswith(prefix) for d in dirs):
        return "", list(options)
    rest = [o for i, o in enumerate(options) if i != idx]
    return common, rest + ["lowerdir=" + ":".join(d[len(prefix):] for d in dirs)]


def mount(m: MountLike, target: str) -> None:
    """Mount one record on ``target`` (blocking: call it in a thread)."""
    options = list(m.options)
    if m.type == "overlay" and len(",".join(options)) >= PAGE - 512:
        common, options = compact_lowerdirs(options)
        if common:
            _mount_from(common, m.source, target, options)
            return
    flags, propagation, data = parse_options(options)
    fstype = m.type
    if fstype == "bind":
        flags |= MS_BIND
        fstype = ""
    _mount(m.source, target, fstype, flags, data)
    try:
        if flags & MS_BIND and flags & MS_RDONLY:
            # a bind mount ignores ro until remounted
            _mount("", target, "", flags | MS_REMOUNT, "")
        if propagation:
            _mount("", target, "", propagation, "")
    except OSError:
        unmount(target)
        raise


def _mount_from(cwd: str, source: str, target: str, options: list[str]) -> None:
    """The overlay mount of a deep chain, by mount(8) running in the lowerdirs' common directory."""
    res = subprocess.run(["mount", "-t", "overlay", "-o", ",".join(options), source, target], cwd=cwd,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(f"mount overlay on {target}: {res.stderr.strip()}")


def mount_all(mounts: Sequence[MountLike], target: str) -> None:
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target)
        raise


def unmount(target: str, lazy: bool = False) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH if lazy else 0) != 0:
        raise _syscall_error(f"umount {target}")


def unmount_all(target: str, lazy_if_busy: bool = False) -> None:
    """Unmount every mount stacked on ``target`` (a busy one lazily, if asked)."""
    for _ in range(64):
        try:
            unmount(target)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):  # nothing (more) mounted there
                return
            if exc.errno != errno.EBUSY or not lazy_if_busy:
                raise
            unmount(target, lazy=True)
    raise OSError(f"umount {target}: still mounted after 64 unmounts")


def is_mounted(target: str) -> bool:
    real = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)
