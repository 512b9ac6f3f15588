"""A task's bundle on disk: its rootfs (containerd Mounts from a snapshotter) mounted at
<bundle>/rootfs, and the bundle's removal. The plain functions run on a thread the
caller already is on (one trip per step of a container's start)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from flotilla.libs import mount as libmount
from flotilla.libs.api.runtime import Mount
from flotilla.libs.errors import InvalidArgument


def mount_rootfs(mounts: list[Mount], target: Path) -> None:
    """Mount each in order on ``target`` (libs.mount: overlay lowerdir compaction, bind ro)."""
    try:
        libmount.mount_all(mounts, str(target))
    except OSError as exc:
        raise InvalidArgument(f"failed to mount rootfs component: {exc}: invalid argument") from None


def unmount_rootfs(bundle: Path) -> None:
    """Unmount everything stacked on its rootfs (lazily if busy, so this never hangs)."""
    libmount.unmount_all(str(bundle / "rootfs"), True)


def remove_bundle_now(bundle: Path) -> None:
    """Unmount the rootfs (see unmount_rootfs), then delete the bundle."""
    unmount_rootfs(bundle)
    shutil.rmtree(bundle, True)


async def remove_bundle(bundle: Path) -> None:
    await asyncio.to_thread(remove_bundle_now, bundle)
