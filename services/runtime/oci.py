"""The OCI runtime binary (runc or crun): its commands, run as asyncio subprocesses."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flotilla.libs.errors import FailedPrecondition, NotFound, Unknown

from . import cgroups, proc

_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


@functools.cache
def preferred_binary() -> str:
    """crun starts containers faster than runc (docs/runtime.md), so it is the default wherever
    it can checkpoint too, or where CRIU cannot work anyway (``criu check`` fails, as on this
    kernel); otherwise runc, containerd's default. Probed once (about 30 ms)."""
    if not shutil.which("crun"):
        return "runc"
    if not shutil.which("runc"):
        return "crun"
    try:
        if "+CRIU" in subprocess.run(["crun", "--version"], capture_output=True, text=True, timeout=10).stdout:
            return "crun"
        criu_works = bool(shutil.which("criu")) and \
            subprocess.run(["criu", "check"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return "runc"
    return "runc" if criu_works else "crun"


def error_text(stderr: str) -> str:
    """runc's last error message (``level=error msg="..."``), or crun's last line."""
    found = _MSG.findall(stderr)
    if found:
        return found[-1].replace('\\"', '"').replace("\\n", "; ").strip("; ")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def log_error(path: Path) -> str:
    """The last error runc/crun wrote to its JSON log (``--log --log-format json``)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") == "error" and entry.get("msg"):
            return str(entry["msg"])
    return ""


def kill_error(text: str) -> Exception:
    """containerd's mapping of a failed kill (pkg/process' checkKillError)."""
    low = text.lower()
    if "container not running" in text or "no such process" in low or "process already finished" in text:
        return NotFound("process already finished: not found")
    if "does not exist" in text:
        return NotFound("no such container: not found")
    return Unknown(f"unknown error after kill: {text}: unknown")


class RuntimeFailed(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def exec_error(binary: str) -> str:
    """Why ``binary`` cannot be run, in the words of Go's exec (what containerd's go-runc
    reports), or "" when it can."""
    if "/" not in binary:
        return "" if shutil.which(binary) else f'exec: "{binary}": executable file not found in $PATH'
    if os.path.isfile(binary) and os.access(binary, os.X_OK):
        return ""
    reason = "permission denied" if os.path.exists(binary) else "no such file or directory"
    return f"fork/exec {binary}: {reason}"


@dataclass(frozen=True)
class OciRuntime:
    binary: str         # "runc", "crun" or a path
    root: Path          # its state root (--root), one per binary and namespace
    systemd_cgroup: bool = False  # runc options' SystemdCgroup: cgroups through systemd

    @property
    def path(self) -> str:
        return shutil.which(self.binary) or self.binary

    @property
    def name(self) -> str:
        return Path(self.binary).name

    @property
    def hides_cgroup2(self) -> bool:
        """crun creates (and restores) containers only where it does not see the hybrid host's
        cgroup2 mount; the supervisor then runs it in a mount namespace without that mount."""
        return self.name == "crun" and cgroups.hybrid_with_v2_controllers()

    def argv(self, *args: str) -> list[str]:
        systemd = ["--systemd-cgroup"] if self.systemd_cgroup else []  # a global flag, as go-runc passes it
        return [self.path, "--root", str(self.root), *systemd, *args]

    async def run(self, *args: str, stdin: bytes | None = None) -> str:
        try:
            res = await proc.run(self.argv(*args), stdin, runtime=True)
        except OSError as exc:  # the binary is gone or cannot be run
            raise RuntimeFailed(exec_error(self.binary) or str(exc)) from None
        if res.returncode != 0:
            raise RuntimeFailed(error_text(res.stderr.decode(errors="replace")))
        return res.stdout.decode(errors="replace")

    async def start(self, id: str) -> None:
        await self.run("start", id)

    async def kill(self, id: str, signal: int, all: bool = False) -> None:
        try:
            await self.run("kill", *(["--all"] if all else []), id, str(signal))
        except RuntimeFailed as exc:
            raise kill_error(exc.text) from None

    async def delete(self, id: str, force: bool = False) -> None:
        try:
            await self.run("delete", *(["--force"] if force else []), id)
        except RuntimeFailed as exc:
            if "does not exist" not in exc.text and "No such file" not in exc.text:
                raise

    async def pause(self, id: str) -> None:
        await self.run("pause", id)

    async def resume(self, id: str) -> None:
        await self.run("resume", id)

    async def state(self, id: str) -> dict[str, Any] | None:
        try:
            return json.loads(await self.run("state", id))
        except (RuntimeFailed, ValueError):
            return None

    async def ps(self, id: str) -> list[int]:
        try:
            out = await self.run("ps", "--format", "json", id)
        except RuntimeFailed as exc:
            raise FailedPrecondition(f"{exc.text}: failed precondition") from None
        return [int(p) for p in (json.loads(out) or [])]

    async def update(self, id: str, resources: bytes) -> None:
        await self.run("update", "--resources", "-", id, stdin=resources)

    async def checkpoint(self, id: str, image: Path, work: Path, leave_running: bool) -> None:
        await self.run("checkpoint", "--image-path", str(image), "--work-path", str(work),
                       *(["--leave-running"] if leave_running else []), id)
