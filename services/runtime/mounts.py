"""Mounting a task's rootfs (containerd Mounts from a snapshotter) at <bundle>/rootfs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from flotilla.libs import mount as libmount
from flotilla.libs.api.runtime import Mount
from flotilla.libs.errors import InvalidArgument

from . import proc


async def _run(*argv: str) -> tuple[int, str]:
    res = await proc.run(list(argv), merge=True)
    return res.returncode, res.stdout.decode(errors="replace").strip()


async def mount_all(mounts: list[Mount], target: Path) -> None:
    """Mount each in order on ``target`` (libs.mount: overlay lowerdir compaction, bind ro)."""
    try:
        await asyncio.to_thread(libmount.mount_all, mounts, str(target))
    except OSError as exc:
        raise InvalidArgument(f"failed to mount rootfs component: {exc}: invalid argument") from None


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


async def unmount_all(target: Path) -> None:
    """Unmount everything stacked on ``target``; lazily if busy, so delete never hangs."""
    for _ in range(16):
        if not target.exists() or not await asyncio.to_thread(is_mounted, target):
            return
        code, _ = await _run("umount", str(target))
        if code != 0:
            await _run("umount", "-l", str(target))
