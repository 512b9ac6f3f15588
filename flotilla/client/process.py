"""A started task with its standard streams: start, wait, kill, delete (what ``ctr run`` does)."""

from __future__ import annotations

import asyncio
import signal as _signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .cio import FifoSet, Write
from .tasks import Exit

if TYPE_CHECKING:
    from .client import Client


@dataclass
class RunningTask:
    client: "Client"
    container_id: str
    pid: int
    io: FifoSet | None = None
    _wait: "asyncio.Task[Exit] | None" = field(default=None, repr=False)

    async def wait(self) -> Exit:
        """The exit status, once the process has exited and its output is copied."""
        assert self._wait is not None
        status = await self._wait
        if self.io is not None:
            await self.io.wait()
        return status

    async def kill(self, signal: int | str = _signal.SIGTERM, all: bool = False) -> None:
        await self.client.tasks.kill(self.container_id, signal, all=all)

    async def delete(self) -> Exit:
        try:
            return await self.client.tasks.delete(self.container_id)
        finally:
            if self._wait is not None and not self._wait.done():
                self._wait.cancel()
            if self.io is not None:
                self.io.close()


async def start_task(client: "Client", container_id: str, *, stdout: Write | None = None,
                     stderr: Write | None = None, stdin: "asyncio.StreamReader | bytes | None" = None,
                     terminal: bool = False, with_io: bool = True) -> RunningTask:
    """Create and start the container's task, its output copied to ``stdout``/``stderr``."""
    container = await client.containers.get(container_id)
    rootfs = await client.rootfs(container)
    io = FifoSet.create(container_id, stdin=stdin is not None, terminal=terminal) if with_io else None
    try:
        if io is not None:
            io.start_copy(stdout, stderr, stdin)
        pid = await client.tasks.create(container_id, rootfs, stdin=io.stdin if io else "",
                                        stdout=io.stdout if io else "", stderr=io.stderr if io else "",
                                        terminal=terminal)
        task = RunningTask(client, container_id, pid, io)
        task._wait = asyncio.ensure_future(client.tasks.wait(container_id))
        await asyncio.sleep(0)  # let Wait reach the server before Start
        try:
            await client.tasks.start(container_id)
        except BaseException:
            task._wait.cancel()
            await client.tasks.delete(container_id)
            raise
        if io is not None:
            io.started()
        return task
    except BaseException:
        if io is not None:
            io.close()
        raise
