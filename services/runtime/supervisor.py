"""The per-process supervisor (``flotilla-shim``, C, see shim/flotilla-shim.c): finding or
building its binary, starting it, and watching it from the service without being its parent."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from flotilla.libs.api.runtime import Stdio

from . import proc, sealed

SOURCE = Path(__file__).resolve().parent / "shim" / "flotilla-shim.c"
NAME = "flotilla-shim"


def build(dest: Path) -> Path:
    """Compile the supervisor (the Makefile does this at install time; this is the fallback)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    subprocess.run(["gcc", "-O2", "-s", "-o", str(tmp), str(SOURCE)], check=True, capture_output=True)
    tmp.rename(dest)
    return dest


def locate() -> Path:
    """``$FLOTILLA_SHIM``, else next to the interpreter (the venv's bin), else on PATH; built
    there when missing or older than its source."""
    env = os.environ.get("FLOTILLA_SHIM")
    if env:
        return Path(env)
    beside = Path(sys.executable).parent / NAME
    if beside.exists() and (not SOURCE.exists() or beside.stat().st_mtime >= SOURCE.stat().st_mtime):
        return beside
    if SOURCE.exists() and os.access(beside.parent, os.W_OK):
        return build(beside)
    found = shutil.which(NAME)
    if found:
        return Path(found)
    raise FileNotFoundError(f"{NAME} not found; run make install")


@dataclass
class Started:
    pid: int          # the container process
    shim_pid: int     # its supervisor


class SupervisorFailed(Exception):
    pass


async def spawn(binary: Path, state: Path, stdio: Stdio, runtime_argv: list[str],
                hide_cgroup2: bool = False) -> Started:
    """Start a supervisor running ``runtime_argv`` (its create or exec command); returns once
    that command finished and the process runs under the supervisor. ``hide_cgroup2`` runs
    the command where /sys/fs/cgroup/unified is not mounted (see ``OciRuntime.hides_cgroup2``)."""
    args = [str(binary), "-s", str(state)]
    if stdio.stdin:
        args += ["-i", stdio.stdin]
    if stdio.stdout:
        args += ["-o", stdio.stdout]
    if stdio.stderr and not stdio.terminal:
        # a terminal carries stderr on the pty: containerd's clients make no stderr FIFO then
        args += ["-e", stdio.stderr]
    if stdio.terminal:
        args.append("-t")
    if hide_cgroup2:
        args.append("-u")
    exe = sealed.known_path(runtime_argv[0])
    if exe != runtime_argv[0]:
        args += ["-x", exe]
    res = await proc.run([*args, "--", *runtime_argv])
    if res.returncode != 0:
        raise SupervisorFailed(res.stderr.decode(errors="replace").strip())
    pid, shim_pid = (int(x) for x in res.stdout.split())
    return Started(pid, shim_pid)


def is_supervisor(pid: int) -> bool:
    """True while ``pid`` is a live flotilla-shim (not a zombie, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0", 1)[0]
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and cmd.endswith(NAME.encode())


def watch(pid: int, on_exit: "asyncio.Future[None] | None" = None) -> "asyncio.Future[None]":
    """A future that completes when process ``pid`` (not our child) exits: a pidfd turns
    readable then. Completes at once when it is already gone."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = on_exit or loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fut.set_result(None)
        return fut

    def ready() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    return fut
