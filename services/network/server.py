"""The network service's NATS binding: host-local subjects, the engine's work in threads,
and a periodic sweep that releases the tasks whose process has exited."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.routes import Route

from . import api
from .engine import Engine

log = logging.getLogger("flotilla.network")
SWEEP_INTERVAL = 5.0  # seconds; a task deleted through the gateway is detached at once anyway
# Undoing a gone task's interfaces (the plugins' DEL, iptables) is nobody's wait: it runs in
# one thread at this nice value, which its plugin processes inherit, so that on a busy host it
# takes the CPU the calls clients wait for leave over (measured: 50 networked stops 1.57x
# containerd's with the DELs at the calls' priority).
TEARDOWN_NICE = 10


def _lower_priority() -> None:
    # Linux: the nice value is per thread, and a process forked from this thread inherits it
    os.setpriority(os.PRIO_PROCESS, 0, TEARDOWN_NICE)


class NetworkServer:
    def __init__(self, bus: Bus, cfg: Config, engine: Engine) -> None:
        self.bus, self.cfg, self.engine = bus, cfg, engine
        self._sweeper: asyncio.Task[None] | None = None
        self._detaching: set[asyncio.Future[bool]] = set()  # detaches answered, their DEL running
        self._teardowns = ThreadPoolExecutor(1, "network-teardown", initializer=_lower_priority)

    async def create(self, r: api.NetworkSpec) -> api.Network:
        return await asyncio.to_thread(self.engine.create_network, r)

    async def list(self, _r: api.ListRequest) -> list[api.Network]:
        return await asyncio.to_thread(self.engine.list_networks)

    async def inspect(self, r: api.NameRequest) -> api.Network:
        return await asyncio.to_thread(self.engine.inspect_network, r.name)

    async def remove(self, r: api.NameRequest) -> None:
        await self._detached()  # a container deleted a moment ago no longer holds the network
        await asyncio.to_thread(self.engine.remove_network, r.name)

    async def attach(self, r: api.AttachTask) -> list[api.Interface]:
        return await asyncio.to_thread(self.engine.attach, r.namespace, r.container_id, r.pid, r.labels)

    async def detach(self, r: api.TaskRef) -> None:
        """Answered once the detach is recorded; the plugins' DEL runs right after. The task
        is gone by then (Tasks.Delete calls this), and its client need not wait for the
        bridge plugin's and iptables' work: a killed service's recovery finishes it."""
        if await asyncio.to_thread(self.engine.begin_detach, r.namespace, r.container_id, r.pid):
            work = asyncio.get_running_loop().run_in_executor(
                self._teardowns, self.engine.detach, r.namespace, r.container_id, r.pid)
            self._detaching.add(work)
            work.add_done_callback(self._detach_done)

    def _detach_done(self, work: "asyncio.Future[bool]") -> None:
        self._detaching.discard(work)
        if not work.cancelled() and work.exception() is not None:
            log.error("detach failed (the sweep tries again)", exc_info=work.exception())

    async def _detached(self, timeout: float = 60.0) -> None:
        if self._detaching:
            await asyncio.wait(list(self._detaching), timeout=timeout)

    async def interfaces(self, r: api.TaskRef) -> list[api.Interface]:
        return await asyncio.to_thread(self.engine.interfaces, r.namespace, r.container_id)

    async def add(self, r: api.InterfaceAdd) -> api.Interface:
        return await asyncio.to_thread(self.engine.add_interface, r)

    async def update(self, r: api.InterfaceUpdate) -> api.Interface:
        return await asyncio.to_thread(self.engine.update_interface, r)

    async def delete(self, r: api.InterfaceRef) -> None:
        await asyncio.to_thread(self.engine.remove_interface, r.namespace, r.container_id, r.ifname)

    async def start(self) -> None:
        routes: list[tuple[Route[Any, Any], Callable[[Any], Awaitable[Any]]]] = [
            (api.CREATE, self.create), (api.LIST, self.list), (api.INSPECT, self.inspect),
            (api.REMOVE, self.remove), (api.ATTACH, self.attach), (api.DETACH, self.detach),
            (api.INTERFACES, self.interfaces), (api.ADD, self.add), (api.UPDATE, self.update),
            (api.DEL, self.delete)]
        await self.bus.serve_routes(api.stem(self.cfg.prefix, self.cfg.host), routes, label="network.")
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                released = await asyncio.get_running_loop().run_in_executor(self._teardowns, self.engine.sweep)
                if released:
                    log.info("released the interfaces of %d exited task(s)", released)
            except Exception:  # the next round tries again
                log.exception("sweep failed")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._detached(timeout=20.0)  # else the next instance's recovery finishes them
        self._teardowns.shutdown(wait=False, cancel_futures=True)
