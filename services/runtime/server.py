"""The runtime service's NATS binding: host-local subjects routed to the engine."""

from __future__ import annotations

from typing import Any

from flotilla.libs import events
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.wire import from_wire

from . import api
from .engine import Engine, Publish


class RuntimeServer:
    def __init__(self, bus: Bus, cfg: Config, engine: Engine) -> None:
        self.bus, self.cfg, self.engine = bus, cfg, engine

    async def create(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.CreateTask, req)
        return await self.engine.create(r.namespace, r.id, r.spec, r.runtime, r.binary, r.rootfs, r.stdio,
                                        r.checkpoint, root=r.root, systemd_cgroup=r.systemd_cgroup,
                                        shim_cgroup=r.shim_cgroup)

    async def start(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.ProcessRef, req)
        return await self.engine.start(r.namespace, r.id, r.exec_id)

    async def delete(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.ProcessRef, req)
        return await self.engine.delete(r.namespace, r.id, r.exec_id)

    async def get(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.ProcessRef, req)
        return self.engine.get(r.namespace, r.id, r.exec_id)

    async def list(self, req: dict[str, Any]) -> Any:
        return self.engine.list(from_wire(api.TaskList, req).namespace)

    async def kill(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.Kill, req)
        await self.engine.kill(r.namespace, r.id, r.exec_id, r.signal, r.all)

    async def exec(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.Exec, req)
        await self.engine.exec(r.namespace, r.id, r.exec_id, r.spec, r.stdio)

    async def resize(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.Resize, req)
        await self.engine.resize(r.namespace, r.id, r.exec_id, r.width, r.height)

    async def close_io(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.CloseIO, req)
        if r.stdin:
            await self.engine.close_io(r.namespace, r.id, r.exec_id)

    async def pause(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.ProcessRef, req)
        await self.engine.pause(r.namespace, r.id)

    async def resume(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.ProcessRef, req)
        await self.engine.resume(r.namespace, r.id)

    async def pids(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.ProcessRef, req)
        return await self.engine.pids(r.namespace, r.id)

    async def checkpoint(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.Checkpoint, req)
        return await self.engine.checkpoint(r.namespace, r.id, r.path, r.exit, r.work_path)

    async def update(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.Update, req)
        await self.engine.update(r.namespace, r.id, r.resources)

    async def metrics(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.MetricsQuery, req)
        return await self.engine.metrics(r.namespace, r.ids)

    async def wait(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.WaitFor, req)
        return await self.engine.wait(r.namespace, r.id, r.exec_id, min(max(r.max_wait, 0.0), 60.0))

    async def start_serving(self) -> None:
        routes = {
            api.CREATE: self.create, api.START: self.start, api.DELETE: self.delete, api.GET: self.get,
            api.LIST: self.list, api.KILL: self.kill, api.EXEC: self.exec, api.RESIZE: self.resize,
            api.CLOSE_IO: self.close_io, api.PAUSE: self.pause, api.RESUME: self.resume, api.PIDS: self.pids,
            api.CHECKPOINT: self.checkpoint, api.UPDATE: self.update, api.METRICS: self.metrics,
            api.WAIT: self.wait,
        }
        for method, handler in routes.items():
            await self.bus.serve(api.subject(self.cfg.prefix, self.cfg.host, method), handler, method=method)


def publisher(bus: Bus, cfg: Config) -> Publish:
    """The engine's event sink: containerd's events onto the bus, as data (see libs/events)."""
    async def publish(topic: str, namespace: str, type_url: str, fields: dict[str, Any]) -> None:
        await events.publish(bus, cfg.prefix, topic, namespace, type_url, **fields)
    return publish
