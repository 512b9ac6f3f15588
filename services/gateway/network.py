"""Networks for every containerd client, server-side (docs/network.md).

``TaskNetworks``: Tasks.Create attaches a task whose container carries the network label
once the runtime made it (its process exists, not started yet), and Tasks.Delete detaches
it. ``NetworksServicer``: Flotilla's own gRPC methods ``/flotilla.network.v1.Networks/<M>``
for the ``flotilla`` CLI (containerd has no such API); requests and replies are msgpack maps
of the records of ``flotilla.libs.api.network``, the namespace from the usual header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

import grpc
from flotilla.libs.api.metadata import Container
from flotilla.libs.api.network import (
    AttachTask, InterfaceAdd, InterfaceUpdate, NetworkClient, NetworkSpec, wants_network,
)
from flotilla.libs.api.runtime import Exit, ProcessRef, RuntimeClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import FlotillaError, InvalidArgument, NotFound
from flotilla.libs.wire import from_wire, pack, to_wire, unpack
from grpc import aio

from .containers import ContainerRecords
from .rpc import namespace, unary

log = logging.getLogger("flotilla.gateway")
SERVICE = "flotilla.network.v1.Networks"
# a Delete waits this long at most for the detach (the service's own sweep releases the rest):
# through a restart of the network service, not through its absence
DETACH_TIMEOUT = 30.0


class TaskNetworks:
    def __init__(self, client: NetworkClient, runtime: RuntimeClient, containers: ContainerRecords) -> None:
        self.client, self.runtime, self.containers = client, runtime, containers

    async def created(self, ns: str, container: Container, pid: int) -> None:
        """Attach the new task as its labels say; if that fails, the task goes too (a client
        must not start a container that lacks the network it asked for)."""
        if not wants_network(container.labels):
            return
        try:
            await self.client.attach(AttachTask(ns, container.id, pid, dict(container.labels)))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.runtime.delete(ProcessRef(ns, container.id))
            raise

    async def delete(self, ns: str, id: str, limit: float, deleting: Awaitable[Exit]) -> Exit:
        """Tasks.Delete's ``deleting``, then the detach of a labelled container's task. The
        container is looked up meanwhile. A detach that fails is logged, not answered: the
        task is gone, and the network service releases it on its own (its sweep)."""
        lookup = asyncio.ensure_future(self.containers.get(ns, id, limit))
        try:
            exit_ = await deleting
        except BaseException:
            lookup.cancel()
            lookup.add_done_callback(_consume)
            raise
        try:
            container = await lookup
        except FlotillaError:
            return exit_
        if wants_network(container.labels):
            try:
                await self.client.detach(ns, id, exit_.pid, timeout=DETACH_TIMEOUT)
            except FlotillaError as exc:
                log.warning("detach of %s/%s: %s (the network service will release it)", ns, id, exc.message)
        return exit_


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _record(cls: type, request: Any, ns: str | None, **extra: Any) -> Any:
    if not isinstance(request, dict):
        raise InvalidArgument(f"{cls.__name__}: a map expected: invalid argument")
    fields = {**request, **extra}
    if ns is not None:
        fields["namespace"] = ns
    return from_wire(cls, fields)


class NetworksServicer:
    def __init__(self, client: NetworkClient, runtime: RuntimeClient) -> None:
        self.client, self.runtime = client, runtime

    @classmethod
    def register(cls, server: aio.Server, bus: Bus, cfg: Config) -> None:
        servicer = cls(NetworkClient(bus, cfg.prefix, cfg.host), RuntimeClient(bus, cfg.prefix, cfg.host))
        methods = {"Create": servicer.Create, "List": servicer.List, "Inspect": servicer.Inspect,
                   "Remove": servicer.Remove, "Interfaces": servicer.Interfaces,
                   "AddInterface": servicer.AddInterface, "UpdateInterface": servicer.UpdateInterface,
                   "RemoveInterface": servicer.RemoveInterface}
        handlers = {name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=unpack,
                                                              response_serializer=pack)
                    for name, fn in methods.items()}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])

    @unary("Networks.Create")
    async def Create(self, request: Any, context: aio.ServicerContext) -> Any:
        return to_wire(await self.client.create(_record(NetworkSpec, request, None)))

    @unary("Networks.List")
    async def List(self, request: Any, context: aio.ServicerContext) -> Any:
        return to_wire(await self.client.list())

    @unary("Networks.Inspect")
    async def Inspect(self, request: Any, context: aio.ServicerContext) -> Any:
        return to_wire(await self.client.inspect(_name(request)))

    @unary("Networks.Remove")
    async def Remove(self, request: Any, context: aio.ServicerContext) -> Any:
        await self.client.remove(_name(request))
        return {}

    @unary("Networks.Interfaces")
    async def Interfaces(self, request: Any, context: aio.ServicerContext) -> Any:
        return to_wire(await self.client.interfaces(namespace(context), _container(request)))

    @unary("Networks.AddInterface")
    async def AddInterface(self, request: Any, context: aio.ServicerContext) -> Any:
        ns = namespace(context)
        info = await self.runtime.get(ProcessRef(ns, _container(request)))
        if info.status not in ("created", "running", "paused"):
            raise NotFound(f"task {info.id}: not running: not found")
        return to_wire(await self.client.add_interface(_record(InterfaceAdd, request, ns, pid=info.pid)))

    @unary("Networks.UpdateInterface")
    async def UpdateInterface(self, request: Any, context: aio.ServicerContext) -> Any:
        return to_wire(await self.client.update_interface(_record(InterfaceUpdate, request, namespace(context))))

    @unary("Networks.RemoveInterface")
    async def RemoveInterface(self, request: Any, context: aio.ServicerContext) -> Any:
        ns = namespace(context)
        if not isinstance(request, dict) or not isinstance(request.get("ifname"), str):
            raise InvalidArgument("RemoveInterface: a map with container_id and ifname: invalid argument")
        await self.client.remove_interface(ns, _container(request), request["ifname"])
        return {}


def _name(request: Any) -> str:
    if not isinstance(request, dict) or not isinstance(request.get("name"), str) or not request["name"]:
        raise InvalidArgument("a map with the network's name: invalid argument")
    return str(request["name"])


def _container(request: Any) -> str:
    if not isinstance(request, dict) or not isinstance(request.get("container_id"), str) or not request["container_id"]:
        raise InvalidArgument("a map with container_id: invalid argument")
    return str(request["container_id"])
