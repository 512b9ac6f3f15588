"""Mounting containerd-style ``Mount`` records (shared by the snapshots and runtime services).

The kernel takes at most one page of mount data. A deep overlay chain has hundreds of
absolute ``lowerdir`` paths, so, as containerd does, the lowerdirs are made relative to
their longest common directory and the mount is made by a child whose working directory is
that directory (``mount(8)`` run with ``cwd``), leaving the Mount record itself unchanged.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Protocol

PAGE = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096


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
    cwd = None
    if m.type == "overlay" and len(",".join(options)) >= PAGE - 512:
        common, options = compact_lowerdirs(options)
        cwd = common or None
    mtype = m.type
    if mtype == "bind":
        options = options if any(o in ("bind", "rbind") for o in options) else options + ["bind"]
        mtype = "none"
    args = ["mount", "-t", mtype, m.source, target]
    if options:
        args[1:1] = ["-o", ",".join(options)]
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(f"mount {m.type} on {target}: {res.stderr.strip()}")
    if m.type == "bind" and "ro" in options:
        # a bind mount ignores ro until remounted
        res = subprocess.run(["mount", "-o", "remount,ro,bind", target], capture_output=True, text=True)
        if res.returncode != 0:
            unmount(target)
            raise OSError(f"remount ro {target}: {res.stderr.strip()}")


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
    args = ["umount", "-l", target] if lazy else ["umount", target]
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(f"umount {target}: {res.stderr.strip()}")


def unmount_all(target: str) -> None:
    """Unmount every mount stacked on ``target``."""
    while is_mounted(target):
        unmount(target)


def is_mounted(target: str) -> bool:
    real = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)
