"""The metadata service's NATS binding: routes each method to the store (in a thread),
publishes containerd's events, and runs garbage collection after deletes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from flotilla.libs import events
from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.snapshots import SNAPSHOTTERS, SnapshotsClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import FlotillaError
from flotilla.libs.wire import from_wire

from . import api
from .collector import Collector
from .store import MetadataStore

_HELD_TIMEOUT = 5.0


def _any(value: api.AnyValue | None) -> dict[str, Any] | None:
    return None if value is None else {"type_url": value.type_url, "value": value.value}


class MetadataServer:
    def __init__(self, bus: Bus, cfg: Config, store: MetadataStore) -> None:
        self.bus, self.cfg, self.store = bus, cfg, store
        self.gc = Collector(bus, cfg, store)
        # content-service releases of deleted leases still running, by (namespace, lease id)
        self._releases: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def _event(self, topic: str, namespace: str, type_url: str, **fields: Any) -> None:
        await events.publish(self.bus, self.cfg.prefix, topic, namespace, type_url, **fields)

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store write: waits while a collection runs, then runs in a thread."""
        async with self.gc.gate.write():
            return await asyncio.to_thread(fn, *args)

    # -- namespaces ----------------------------------------------------------------------

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

    async def _held_elsewhere(self, name: str) -> tuple[bool, list[str]]:
        """What the content and snapshots services still hold in namespace ``name``;
        a service that is not deployed holds nothing."""
        blobs, snapshotters = False, []
        content = ContentClient(self.bus, self.cfg.prefix, timeout=_HELD_TIMEOUT)
        snaps = SnapshotsClient(self.bus, self.cfg.prefix, self.cfg.host)
        if await self.gc.content_up():
            blobs = await content.namespace_held(name)
        if await self.gc.snapshots_up():
            snapshotters = await snaps.namespace_held(name, timeout=_HELD_TIMEOUT)
        return blobs, snapshotters

    async def ns_delete(self, req: dict[str, Any]) -> Any:
        name = from_wire(api.NamespaceName, req).name
        blobs, snapshotters = await self._held_elsewhere(name)
        async with self.gc.gate.write():
            await asyncio.to_thread(lambda: self.store.delete_namespace(name, blobs=blobs, snapshotters=snapshotters))
        await self._event("/namespaces/delete", name, "containerd.events.NamespaceDelete", name=name)
        return None

    # -- containers ----------------------------------------------------------------------

    async def c_get(self, req: dict[str, Any]) -> Any:
        ref = from_wire(api.ContainerRef, req)
        return await asyncio.to_thread(self.store.get_container, ref.namespace, ref.id)

    async def c_list(self, req: dict[str, Any]) -> Any:
        lr = from_wire(api.ListRequest, req)
        items, after = await asyncio.to_thread(self.store.list_containers_page, lr.namespace, lr.filters,
                                               lr.after, lr.budget)
        return api.ListPage(items, after) if lr.budget else items  # type: ignore[arg-type]

    async def c_create(self, req: dict[str, Any]) -> Any:
        cr = from_wire(api.ContainerCreate, req)
        c = await self._write(self.store.create_container, cr.namespace, cr.container)
        await self._event("/containers/create", cr.namespace, "containerd.events.ContainerCreate",
                          id=c.id, image=c.image,
                          runtime={"name": c.runtime.name, "options": _any(c.runtime.options)})
        return c

    async def c_update(self, req: dict[str, Any]) -> Any:
        up = from_wire(api.ContainerUpdate, req)
        c = await self._write(self.store.update_container, up.namespace, up.container, up.paths)
        await self._event("/containers/update", up.namespace, "containerd.events.ContainerUpdate",
                          id=c.id, image=c.image, labels=c.labels, snapshot_key=c.snapshot_key)
        return c

    async def c_delete(self, req: dict[str, Any]) -> Any:
        ref = from_wire(api.ContainerRef, req)
        await self._write(self.store.delete_container, ref.namespace, ref.id)
        self.gc.schedule()
        await self._event("/containers/delete", ref.namespace, "containerd.events.ContainerDelete", id=ref.id)
        return None

    # -- images --------------------------------------------------------------------------

    async def i_get(self, req: dict[str, Any]) -> Any:
        ref = from_wire(api.ImageRef, req)
        return await asyncio.to_thread(self.store.get_image, ref.namespace, ref.name)

    async def i_list(self, req: dict[str, Any]) -> Any:
        lr = from_wire(api.ListRequest, req)
        items, after = await asyncio.to_thread(self.store.list_images_page, lr.namespace, lr.filters,
                                               lr.after, lr.budget)
        return api.ListPage(items, after) if lr.budget else items  # type: ignore[arg-type]

    async def i_create(self, req: dict[str, Any]) -> Any:
        cr = from_wire(api.ImageCreate, req)
        i = await self._write(self.store.create_image, cr.namespace, cr.image)
        await self._event("/images/create", cr.namespace, "containerd.services.images.v1.ImageCreate",
                          name=i.name, labels=i.labels)
        return i

    async def i_update(self, req: dict[str, Any]) -> Any:
        up = from_wire(api.ImageUpdate, req)
        i = await self._write(self.store.update_image, up.namespace, up.image, up.paths)
        await self._event("/images/update", up.namespace, "containerd.services.images.v1.ImageUpdate",
                          name=i.name, labels=i.labels)
        return i

    async def i_delete(self, req: dict[str, Any]) -> Any:
        d = from_wire(api.ImageDelete, req)
        await self._write(self.store.delete_image, d.namespace, d.name)
        await self._event("/images/delete", d.namespace, "containerd.services.images.v1.ImageDelete", name=d.name)
        await self._after_delete(d.sync)
        return None

    async def _after_delete(self, sync: bool) -> None:
        if sync:
            await self.gc.collect()
        else:
            self.gc.schedule()

    # -- leases --------------------------------------------------------------------------

    async def l_create(self, req: dict[str, Any]) -> Any:
        cr = from_wire(api.LeaseCreate, req)
        pending = self._releases.get((cr.namespace, cr.lease.id))
        if pending is not None:
            # the old lease's release must not strip the new one's id from its blobs
            await asyncio.shield(pending)
        return await self._write(self.store.create_lease, cr.namespace, cr.lease)

    async def l_delete(self, req: dict[str, Any]) -> Any:
        d = from_wire(api.LeaseDelete, req)
        await self._write(self.store.delete_lease, d.namespace, d.id)
        # The content service's copy of the id goes after the answer: a collection ignores
        # ids of leases the database no longer has, so until then it only holds nothing.
        key = (d.namespace, d.id)
        task = self._releases[key] = asyncio.create_task(self._release(d.namespace, d.id))

        def forget(done: "asyncio.Task[None]") -> None:
            if self._releases.get(key) is done:
                del self._releases[key]
        task.add_done_callback(forget)
        await self._after_delete(d.sync)
        return None

    async def stop(self) -> None:
        await self.gc.stop()
        if self._releases:  # short calls: let them end rather than leave stale ids
            await asyncio.wait(list(self._releases.values()), timeout=_HELD_TIMEOUT)

    async def _release(self, namespace: str, lease: str) -> None:
        """Tell the content service the lease is gone (it keeps lease ids on blobs). With no
        content service on the bus, NATS says so at once (Unavailable): nothing to release."""
        try:
            await ContentClient(self.bus, self.cfg.prefix, timeout=_HELD_TIMEOUT).release_lease(namespace, lease)
        except FlotillaError:
            pass

    async def l_list(self, req: dict[str, Any]) -> Any:
        lr = from_wire(api.ListRequest, req)
        return await asyncio.to_thread(self.store.list_leases, lr.namespace, lr.filters)

    async def l_add(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.LeaseResourceRequest, req)
        await self._write(self.store.add_lease_resource, r.namespace, r.lease, r.resource)
        return None

    async def l_del_resource(self, req: dict[str, Any]) -> Any:
        r = from_wire(api.LeaseResourceRequest, req)
        await self._write(self.store.delete_lease_resource, r.namespace, r.lease, r.resource)
        self.gc.schedule()
        return None

    async def l_resources(self, req: dict[str, Any]) -> Any:
        ref = from_wire(api.LeaseRef, req)
        added = await asyncio.to_thread(self.store.list_lease_resources, ref.namespace, ref.id)
        # what was written under the lease is recorded with it by its store (the content
        # service keeps a blob's leases, the snapshots service a snapshot's), not here
        known = {(r.type, r.id) for r in added}
        held = [r for r in await self._held_by_lease(ref.namespace, ref.id) if (r.type, r.id) not in known]
        # containerd lists content, then ingests, then snapshots by snapshotter
        order = {"content": 0, "ingests": 1}
        return sorted(added + held, key=lambda r: (order.get(r.type, 2), r.type, r.id))

    async def _held_by_lease(self, ns: str, lease: str) -> list[api.Resource]:
        async def blobs() -> list[api.Resource]:
            if not await self.gc.content_up():
                return []
            return [api.Resource(i.digest, "content") for i in await self.gc.content.list(ns) if lease in i.leases]

        async def snapshots(sn: str) -> list[api.Resource]:
            return [api.Resource(i.name, f"snapshots/{sn}")
                    for i in await self.gc.snapshots.list(ns, sn) if lease in i.leases]

        snaps_up = await self.gc.snapshots_up()
        found = await asyncio.gather(blobs(), *(snapshots(sn) for sn in (SNAPSHOTTERS if snaps_up else ())))
        return [r for per in found for r in per]

    async def gc_run(self, _req: Any) -> Any:
        return await self.gc.collect()

    async def start(self) -> None:
        routes: dict[str, Callable[[Any], Awaitable[Any]]] = {
            api.NAMESPACE_GET: self.ns_get,
            api.NAMESPACE_LIST: self.ns_list,
            api.NAMESPACE_CREATE: self.ns_create,
            api.NAMESPACE_UPDATE: self.ns_update,
            api.NAMESPACE_DELETE: self.ns_delete,
            api.CONTAINER_GET: self.c_get,
            api.CONTAINER_LIST: self.c_list,
            api.CONTAINER_CREATE: self.c_create,
            api.CONTAINER_UPDATE: self.c_update,
            api.CONTAINER_DELETE: self.c_delete,
            api.IMAGE_GET: self.i_get,
            api.IMAGE_LIST: self.i_list,
            api.IMAGE_CREATE: self.i_create,
            api.IMAGE_UPDATE: self.i_update,
            api.IMAGE_DELETE: self.i_delete,
            api.LEASE_CREATE: self.l_create,
            api.LEASE_DELETE: self.l_delete,
            api.LEASE_LIST: self.l_list,
            api.LEASE_ADD_RESOURCE: self.l_add,
            api.LEASE_DELETE_RESOURCE: self.l_del_resource,
            api.LEASE_LIST_RESOURCES: self.l_resources,
            api.GC_RUN: self.gc_run,
        }
        for method, handler in routes.items():
            await self.bus.serve(api.subject(self.cfg.prefix, method), handler, method=method)
        self.gc.start()
