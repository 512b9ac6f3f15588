"""Mounting a task's rootfs (containerd Mounts from a snapshotter) at <bundle>/rootfs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from flotilla.libs.api.runtime import Mount
from flotilla.libs.errors import InvalidArgument


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def mount_all(mounts: list[Mount], target: Path) -> None:
    """Mount each in order on ``target`` (mount(8) understands bind, rbind, overlay options)."""
    done = 0
    try:
        for m in mounts:
            kind = "none" if m.type in ("bind", "rbind") else m.type
            opts = list(m.options)
            if m.type in ("bind", "rbind") and not {"bind", "rbind"} & set(opts):
                opts.append("rbind" if m.type == "rbind" else "bind")
            argv = ["mount", "-t", kind]
            if opts:
                argv += ["-o", ",".join(opts)]
            code, out = await _run(*argv, m.source, str(target))
            if code != 0:
                raise InvalidArgument(f"failed to mount rootfs component: {out}: invalid argument")
            done += 1
    except BaseException:
        for _ in range(done):
            await _run("umount", "-l", str(target))
        raise


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
