"""The metadata service's NATS binding."""

from __future__ import annotations

import asyncio
from typing import Any

from flotilla.libs import events
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.wire import from_wire

from . import api
from .store import MetadataStore


class MetadataServer:
    def __init__(self, bus: Bus, cfg: Config, store: MetadataStore) -> None:
        self.bus, self.cfg, self.store = bus, cfg, store

    async def _event(self, topic: str, namespace: str, type_url: str, **fields: Any) -> None:
        await events.publish(self.bus, self.cfg.prefix, topic, namespace, type_url, **fields)

    async def ns_get(self, req: dict[str, Any]) -> Any:
        return await asyncio.to_thread(self.store.get_namespace, from_wire(api.NamespaceName, req).name)

    async def ns_list(self, _req: Any) -> Any:
        return await asyncio.to_thread(self.store.list_namespaces)

    async def ns_create(self, req: dict[str, Any]) -> Any:
        create = from_wire(api.NamespaceCreate, req)
        ns = await asyncio.to_thread(self.store.create_namespace, create.namespace)
        await self._event("/namespaces/create", create.caller or ns.name, "containerd.events.NamespaceCreate",
                          name=ns.name, labels=ns.labels)
        return ns

    async def ns_update(self, req: dict[str, Any]) -> Any:
        upd = from_wire(api.NamespaceUpdate, req)
        ns = await asyncio.to_thread(self.store.update_namespace, upd.namespace, upd.paths)
        await self._event("/namespaces/update", upd.caller or ns.name, "containerd.events.NamespaceUpdate",
                          name=ns.name, labels=upd.namespace.labels)
        return ns

    async def ns_delete(self, req: dict[str, Any]) -> Any:
        name = from_wire(api.NamespaceName, req).name
        await asyncio.to_thread(self.store.delete_namespace, name)
        await self._event("/namespaces/delete", name, "containerd.events.NamespaceDelete", name=name)
        return None

    async def start(self) -> None:
        routes = {
            api.NAMESPACE_GET: self.ns_get,
            api.NAMESPACE_LIST: self.ns_list,
            api.NAMESPACE_CREATE: self.ns_create,
            api.NAMESPACE_UPDATE: self.ns_update,
            api.NAMESPACE_DELETE: self.ns_delete,
        }
        for method, handler in routes.items():
            await self.bus.serve(api.subject(self.cfg.prefix, method), handler, method=method)
