"""Mounting a task's rootfs (containerd Mounts from a snapshotter) at <bundle>/rootfs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from flotilla.libs import mount as libmount
from flotilla.libs.api.runtime import Mount
from flotilla.libs.errors import InvalidArgument


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


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
