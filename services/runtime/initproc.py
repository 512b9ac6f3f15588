"""A task's init process under its supervisor: created (``runc create``), or restored from
CRIU's images (``runc restore --detach``), which containerd's shim does at Start, not at Create:
the Go client creates a task from a checkpoint, then starts it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from . import cgroups, supervisor
from .choice import create_failed, spawn_error, unknown
from .oci import OciRuntime
from .state import Task


async def spawn_init(shim: Path, task: Task, oci: OciRuntime) -> None:
    bundle, rec = task.bundle, task.rec
    restore = bool(rec.checkpoint)
    logf = bundle / "log.json"
    if restore:
        cmd = ["restore", "--detach", "--image-path", rec.checkpoint, "--work-path", str(bundle / "criu"),
               "--bundle", str(bundle), "--pid-file", str(bundle / "pid")]
    else:
        cmd = ["create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid")]
    if rec.init.stdio.terminal:
        cmd += ["--console-socket", "@CONSOLE@"]
    argv = oci.argv("--log", str(logf), "--log-format", "json", *cmd, rec.id)
    try:
        started = await supervisor.spawn(shim, bundle, rec.init.stdio, argv, oci.hides_cgroup2)
    except supervisor.SupervisorFailed as exc:
        text = await asyncio.to_thread(spawn_error, logf, oci, exc)
        if restore:  # the start's error, as containerd's createdCheckpointState answers it
            raise unknown(f"OCI runtime restore failed: {text}") from None
        # runc's message already says "runc create failed: ...", as containerd shows it
        raise create_failed(rec.runtime_name, f"OCI runtime create failed: {text}") from None
    rec.init.pid, rec.init.shim_pid = started.pid, started.shim_pid
    if rec.shim_cgroup:
        try:
            await asyncio.to_thread(cgroups.join, rec.shim_cgroup, started.shim_pid)
        except cgroups.JoinFailed as exc:  # containerd fails its shim's start so
            raise unknown(f"failed to start shim: start failed: {exc}") from None
