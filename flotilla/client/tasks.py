"""Tasks: a container's running process (and its execs)."""

from __future__ import annotations

import datetime as _dt
import json
import signal as _signal
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2

from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2 as pb
from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from flotilla._api.containerd.api.types.task import task_pb2

from ._conn import Conn, rpc
from .types import Mount, ts

STATUS = {task_pb2.UNKNOWN: "unknown", task_pb2.CREATED: "created", task_pb2.RUNNING: "running",
          task_pb2.STOPPED: "stopped", task_pb2.PAUSED: "paused", task_pb2.PAUSING: "pausing"}
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"


@dataclass
class Process:
    container_id: str
    id: str
    pid: int
    status: str
    exit_status: int = 0
    exited_at: _dt.datetime | None = None
    terminal: bool = False

    @staticmethod
    def from_pb(p: task_pb2.Process) -> "Process":
        return Process(p.container_id, p.id, p.pid, STATUS.get(p.status, "unknown"), p.exit_status,
                       ts(p.exited_at), p.terminal)


@dataclass
class Exit:
    status: int
    exited_at: _dt.datetime | None = None


def signal_number(sig: int | str) -> int:
    """``9``, ``"KILL"``, ``"SIGKILL"`` or ``signal.SIGKILL`` as a number."""
    if isinstance(sig, int):
        return int(sig)
    text = sig.upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(getattr(_signal, text))
    except AttributeError:
        from flotilla.libs.errors import InvalidArgument
        raise InvalidArgument(f"invalid signal {sig!r}: invalid argument") from None


class Tasks:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = pb_grpc.TasksStub(conn.channel)

    @rpc
    async def create(self, container_id: str, rootfs: list[Mount] | None = None, *, stdin: str = "",
                     stdout: str = "", stderr: str = "", terminal: bool = False) -> int:
        """Create the task (not started); returns its pid."""
        resp = await self._stub.Create(pb.CreateTaskRequest(
            container_id=container_id, rootfs=[m.to_pb() for m in rootfs or []], stdin=stdin, stdout=stdout,
            stderr=stderr, terminal=terminal), metadata=self._conn.metadata())
        return int(resp.pid)

    @rpc
    async def start(self, container_id: str, exec_id: str = "") -> int:
        resp = await self._stub.Start(pb.StartRequest(container_id=container_id, exec_id=exec_id),
                                      metadata=self._conn.metadata())
        return int(resp.pid)

    @rpc
    async def wait(self, container_id: str, exec_id: str = "") -> Exit:
        resp = await self._stub.Wait(pb.WaitRequest(container_id=container_id, exec_id=exec_id),
                                     metadata=self._conn.metadata())
        return Exit(resp.exit_status, ts(resp.exited_at))

    @rpc
    async def kill(self, container_id: str, signal: int | str = _signal.SIGTERM, *, exec_id: str = "",
                   all: bool = False) -> None:
        await self._stub.Kill(pb.KillRequest(container_id=container_id, exec_id=exec_id,
                                             signal=signal_number(signal), all=all), metadata=self._conn.metadata())

    @rpc
    async def delete(self, container_id: str) -> Exit:
        resp = await self._stub.Delete(pb.DeleteTaskRequest(container_id=container_id), metadata=self._conn.metadata())
        return Exit(resp.exit_status, ts(resp.exited_at))

    @rpc
    async def delete_process(self, container_id: str, exec_id: str) -> Exit:
        resp = await self._stub.DeleteProcess(pb.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
                                              metadata=self._conn.metadata())
        return Exit(resp.exit_status, ts(resp.exited_at))

    @rpc
    async def get(self, container_id: str, exec_id: str = "") -> Process:
        resp = await self._stub.Get(pb.GetRequest(container_id=container_id, exec_id=exec_id),
                                    metadata=self._conn.metadata())
        return Process.from_pb(resp.process)

    @rpc
    async def list(self, filter: str = "") -> list[Process]:
        resp = await self._stub.List(pb.ListTasksRequest(filter=filter), metadata=self._conn.metadata())
        return [Process.from_pb(t) for t in resp.tasks]

    @rpc
    async def exec(self, container_id: str, exec_id: str, process: dict[str, Any], *, stdin: str = "",
                   stdout: str = "", stderr: str = "", terminal: bool = False) -> None:
        """Add a process (an OCI ``process`` object) to the task; start it with ``start(.., exec_id)``."""
        spec = any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(process).encode())
        await self._stub.Exec(pb.ExecProcessRequest(container_id=container_id, exec_id=exec_id, spec=spec,
                                                    stdin=stdin, stdout=stdout, stderr=stderr, terminal=terminal),
                              metadata=self._conn.metadata())

    @rpc
    async def pids(self, container_id: str) -> list[int]:
        resp = await self._stub.ListPids(pb.ListPidsRequest(container_id=container_id), metadata=self._conn.metadata())
        return [p.pid for p in resp.processes]

    @rpc
    async def pause(self, container_id: str) -> None:
        await self._stub.Pause(pb.PauseTaskRequest(container_id=container_id), metadata=self._conn.metadata())

    @rpc
    async def resume(self, container_id: str) -> None:
        await self._stub.Resume(pb.ResumeTaskRequest(container_id=container_id), metadata=self._conn.metadata())

    @rpc
    async def resize(self, container_id: str, width: int, height: int, exec_id: str = "") -> None:
        await self._stub.ResizePty(pb.ResizePtyRequest(container_id=container_id, exec_id=exec_id,
                                                       width=width, height=height), metadata=self._conn.metadata())

    @rpc
    async def close_io(self, container_id: str, exec_id: str = "") -> None:
        await self._stub.CloseIO(pb.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=True),
                                 metadata=self._conn.metadata())
