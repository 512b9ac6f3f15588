"""Mounting a task's rootfs (containerd Mounts from a snapshotter) at <bundle>/rootfs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from flotilla.libs import mount as libmount
from flotilla.libs.api.runtime import Mount
from flotilla.libs.errors import InvalidArgument


async def mount_all(mounts: list[Mount], target: Path) -> None:
    """Mount each in order on ``target`` (libs.mount: overlay lowerdir compaction, bind ro)."""
    try:
        await asyncio.to_thread(libmount.mount_all, mounts, str(target))
    except OSError as exc:
        raise InvalidArgument(f"failed to mount rootfs component: {exc}: invalid argument") from None


async def unmount_all(target: Path) -> None:
    """Unmount everything stacked on ``target``; lazily if busy, so delete never hangs."""
    await asyncio.to_thread(libmount.unmount_all, str(target), True)
