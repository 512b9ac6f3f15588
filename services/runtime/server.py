"""The runtime service's NATS binding: host-local subjects routed to the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from flotilla.libs import events
from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.events import EventRecord
from flotilla.libs.bus import Bus, replaying
from flotilla.libs.config import Config
from flotilla.libs.errors import NotFound
from flotilla.libs.routes import Route

from . import api
from .checkpoints import Checkpoints
from .engine import Engine, Publish

UNKNOWN_EXIT_STATUS = 255


class RuntimeServer:
    def __init__(self, bus: Bus, cfg: Config, engine: Engine) -> None:
        self.bus, self.cfg, self.engine = bus, cfg, engine
        # checkpoint images on the persistent disk (they can be as big as the task's memory)
        self.checkpoints = Checkpoints(ContentClient(bus, cfg.prefix, host=cfg.host),
                                       cfg.root / "runtime" / "checkpoints")
        # the images unpacked for a task created from the content store, until its start has
        # restored it (or its delete); a restart of the service loses both (see Engine.recover)
        self._restores: dict[tuple[str, str], Path] = {}

    async def create(self, r: api.CreateTask) -> api.ProcessInfo:
        if r.checkpoint_blob is None:
            return await self._create(r, r.checkpoint)
        images = await self.checkpoints.unpacked(r.namespace, r.checkpoint_blob)
        try:
            info = await self._create(r, str(images))
        except BaseException:
            await self.checkpoints.discard(images)
            raise
        self._restores[(r.namespace, r.id)] = images
        return info

    async def _create(self, r: api.CreateTask, checkpoint: str) -> api.ProcessInfo:
        return await self.engine.create(r.namespace, r.id, r.spec, r.runtime, r.binary, r.rootfs, r.stdio,
                                        checkpoint, root=r.root, systemd_cgroup=r.systemd_cgroup,
                                        shim_cgroup=r.shim_cgroup)

    async def _discard_images(self, r: api.ProcessRef) -> None:
        images = self._restores.pop((r.namespace, r.id), None) if not r.exec_id else None
        if images is not None:
            await self.checkpoints.discard(images)

    async def start(self, r: api.ProcessRef) -> api.ProcessInfo:
        info = await self.engine.start(r.namespace, r.id, r.exec_id)
        await self._discard_images(r)  # (a failed restore may be started again, as containerd's)
        return info

    async def delete(self, r: api.ProcessRef) -> api.Exit:
        try:
            exit_ = await self.engine.delete(r.namespace, r.id, r.exec_id)
        except NotFound:
            if not replaying():
                raise
            # the instance that had this call died after deleting: the task is gone as asked,
            # and its exit status with it (containerd's UnknownExitStatus)
            exit_ = api.Exit(exited=True, exit_status=UNKNOWN_EXIT_STATUS)
        await self._discard_images(r)
        return exit_

    async def get(self, r: api.ProcessRef) -> api.ProcessInfo:
        return self.engine.get(r.namespace, r.id, r.exec_id)

    async def list(self, r: api.TaskList) -> list[api.ProcessInfo]:
        return self.engine.list(r.namespace)

    async def kill(self, r: api.Kill) -> None:
        await self.engine.kill(r.namespace, r.id, r.exec_id, r.signal, r.all)

    async def exec(self, r: api.Exec) -> None:
        await self.engine.exec(r.namespace, r.id, r.exec_id, r.spec, r.stdio)

    async def resize(self, r: api.Resize) -> None:
        await self.engine.resize(r.namespace, r.id, r.exec_id, r.width, r.height)

    async def close_io(self, r: api.CloseIO) -> None:
        if r.stdin:
            await self.engine.close_io(r.namespace, r.id, r.exec_id)

    async def pause(self, r: api.ProcessRef) -> None:
        await self.engine.pause(r.namespace, r.id)

    async def resume(self, r: api.ProcessRef) -> None:
        await self.engine.resume(r.namespace, r.id)

    async def pids(self, r: api.ProcessRef) -> list[api.PidInfo]:
        return await self.engine.pids(r.namespace, r.id)

    async def checkpoint(self, r: api.Checkpoint) -> api.CheckpointResult:
        if r.path:
            return await self.engine.checkpoint(r.namespace, r.id, r.path, r.exit, r.work_path)
        return api.CheckpointResult(descriptors=await self.checkpoints.checkpoint(
            self.engine, r.namespace, r.id, r.exit, r.work_path, r.lease, r.config))

    async def update(self, r: api.Update) -> None:
        await self.engine.update(r.namespace, r.id, r.resources)

    async def metrics(self, r: api.MetricsQuery) -> list[api.TaskMetrics]:
        return await self.engine.metrics(r.namespace, r.ids)

    async def wait(self, r: api.WaitFor) -> api.Exit:
        return await self.engine.wait(r.namespace, r.id, r.exec_id, min(max(r.max_wait, 0.0), 60.0))

    def routes(self) -> list[tuple[Route[Any, Any], Callable[[Any], Awaitable[Any]]]]:
        return [
            (api.CREATE, self.create), (api.START, self.start), (api.DELETE, self.delete), (api.GET, self.get),
            (api.LIST, self.list), (api.KILL, self.kill), (api.EXEC, self.exec), (api.RESIZE, self.resize),
            (api.CLOSE_IO, self.close_io), (api.PAUSE, self.pause), (api.RESUME, self.resume),
            (api.PIDS, self.pids), (api.CHECKPOINT, self.checkpoint), (api.UPDATE, self.update),
            (api.METRICS, self.metrics), (api.WAIT, self.wait),
        ]

    async def start_serving(self) -> None:
        await asyncio.to_thread(self.checkpoints.clear)
        await self.bus.serve_routes(api.stem(self.cfg.prefix, self.cfg.host), self.routes())


def publisher(bus: Bus, cfg: Config) -> Publish:
    """The engine's event sink: containerd's events onto the bus, as data (see libs/events)."""
    async def publish(namespace: str, event: EventRecord) -> None:
        await events.publish(bus, cfg.prefix, namespace, event, host=cfg.host)
    return publish
