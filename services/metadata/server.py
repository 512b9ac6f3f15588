"""The metadata service's NATS binding: routes each method to the store (in a thread),
publishes containerd's events, and runs garbage collection after deletes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from flotilla.libs import events
from flotilla.libs.api import events as ev
from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.snapshots import SNAPSHOTTERS, SnapshotsClient
from flotilla.libs.bus import Bus, replaying
from flotilla.libs.config import Config
from flotilla.libs.errors import AlreadyExists, FlotillaError, InvalidArgument, NotFound
from flotilla.libs.subjects import token
from flotilla.libs.wire import Wired

from . import api
from .collector import Collector
from .store import MetadataStore

_HELD_TIMEOUT = 5.0
T = TypeVar("T")


def _listed(items: list[Any], after: str, req: api.ListRequest) -> Wired | list[dict[str, Any]]:
    """A list's answer: a page (asked with a budget), its entries joined if asked encoded."""
    if not req.budget:
        return items
    if req.encoded:
        return api.ListPage([], after, b"".join(items)).wired()
    return api.ListPage(items, after).wired()


class MetadataServer:
    def __init__(self, bus: Bus, cfg: Config, store: MetadataStore) -> None:
        self.bus, self.cfg, self.store = bus, cfg, store
        self.gc = Collector(bus, cfg, store)
        # content-service releases of deleted leases still running, by (namespace, lease id)
        self._releases: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def _event(self, namespace: str, event: ev.EventRecord, host: str = "") -> None:
        """``host``: the host a container event is about (its record is that host's alone)."""
        await events.publish(self.bus, self.cfg.prefix, namespace, event, host=host)

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store write: waits while a collection runs, then runs in a thread."""
        async with self.gc.gate.write():
            return await asyncio.to_thread(fn, *args)

    async def _replayed(self, work: Awaitable[T], existing: Callable[[], T] | None = None) -> T:
        """A create (``existing`` reads what it makes) or, without it, a delete."""
        # replayed, its first run may have done it before its instance died: not an error
        try:
            return await work
        except AlreadyExists:
            if existing is None or not replaying():
                raise
            return await asyncio.to_thread(existing)
        except NotFound:
            if existing is not None or not replaying():
                raise
            return cast(T, None)

    # -- namespaces ----------------------------------------------------------------------

    async def ns_get(self, req: api.NamespaceName) -> api.Namespace:
        return await asyncio.to_thread(self.store.get_namespace, req.name)

    async def ns_list(self, _req: None) -> list[api.Namespace]:
        return await asyncio.to_thread(self.store.list_namespaces)

    async def ns_create(self, req: api.NamespaceCreate) -> api.Namespace:
        name = req.namespace.name
        ns = await self._replayed(asyncio.to_thread(self.store.create_namespace, req.namespace),
                                  lambda: self.store.get_namespace(name))
        await self._event(req.caller or ns.name, ev.NamespaceCreate(ns.name, ns.labels))
        return ns

    async def ns_update(self, req: api.NamespaceUpdate) -> api.Namespace:
        ns = await asyncio.to_thread(self.store.update_namespace, req.namespace, req.paths)
        await self._event(req.caller or ns.name, ev.NamespaceUpdate(ns.name, req.namespace.labels))
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

    async def ns_delete(self, req: api.NamespaceName) -> None:
        blobs, snapshotters = await self._held_elsewhere(req.name)
        await self._replayed(self._write(functools.partial(
            self.store.delete_namespace, req.name, blobs=blobs, snapshotters=snapshotters)))
        await self._event(req.name, ev.NamespaceDelete(req.name))

    # -- containers ----------------------------------------------------------------------
    # A container is its host's: a request's host, "" meaning this instance's (callers of
    # before hosts, single-host set-ups).

    def _host(self, host: str) -> str:
        if host and (len(host) > 64 or token(host) != host):
            raise InvalidArgument(f"host {host[:80]!r}: not a host id (letters, digits, '-' and '_'): "
                                  "invalid argument")
        if not host and not self.store.sqlite:
            # on a farm's database an instance of any host may answer: the caller must say whose
            raise InvalidArgument("a container call on a farm must name its host: invalid argument")
        return host or self.cfg.host_id

    async def c_get(self, req: api.ContainerRef) -> api.Container:
        return await asyncio.to_thread(self.store.get_container, req.namespace, req.id, self._host(req.host))

    async def c_list(self, req: api.ListRequest) -> Wired | list[dict[str, Any]]:
        items, after = await asyncio.to_thread(self.store.list_containers_page, req.namespace, req.filters,
                                               req.after, req.budget, self._host(req.host), req.encoded)
        return _listed(items, after, req)

    async def c_create(self, req: api.ContainerCreate) -> api.Container:
        ns, id, host = req.namespace, req.container.id, self._host(req.host)
        c = await self._replayed(self._write(self.store.create_container, ns, req.container, host),
                                 lambda: self.store.get_container(ns, id, host))
        await self._event(ns, ev.ContainerCreate(c.id, c.image, ev.ContainerRuntime(c.runtime.name, c.runtime.options)),
                          host)
        return c

    async def c_update(self, req: api.ContainerUpdate) -> api.Container:
        host = self._host(req.host)
        c = await self._write(self.store.update_container, req.namespace, req.container, req.paths, host)
        await self._event(req.namespace, ev.ContainerUpdate(c.id, c.image, c.labels, c.snapshot_key), host)
        return c

    async def c_delete(self, req: api.ContainerRef) -> None:
        host = self._host(req.host)
        await self._replayed(self._write(self.store.delete_container, req.namespace, req.id, host))
        self.gc.schedule()
        await self._event(req.namespace, ev.ContainerDelete(req.id), host)

    # -- images --------------------------------------------------------------------------

    async def i_get(self, req: api.ImageRef) -> api.Image:
        return await asyncio.to_thread(self.store.get_image, req.namespace, req.name)

    async def i_list(self, req: api.ListRequest) -> Wired | list[dict[str, Any]]:
        items, after = await asyncio.to_thread(self.store.list_images_page, req.namespace, req.filters,
                                               req.after, req.budget, req.encoded)
        return _listed(items, after, req)

    async def i_create(self, req: api.ImageCreate) -> api.Image:
        ns, name = req.namespace, req.image.name
        i = await self._replayed(self._write(self.store.create_image, ns, req.image),
                                 lambda: self.store.get_image(ns, name))
        await self._event(ns, ev.ImageCreate(i.name, i.labels))
        return i

    async def i_update(self, req: api.ImageUpdate) -> api.Image:
        i = await self._write(self.store.update_image, req.namespace, req.image, req.paths)
        await self._event(req.namespace, ev.ImageUpdate(i.name, i.labels))
        return i

    async def i_delete(self, req: api.ImageDelete) -> None:
        await self._replayed(self._write(self.store.delete_image, req.namespace, req.name))
        await self._event(req.namespace, ev.ImageDelete(req.name))
        await self._after_delete(req.sync)

    async def _after_delete(self, sync: bool) -> None:
        if sync:
            await self.gc.collect()
        else:
            self.gc.schedule()

    # -- leases --------------------------------------------------------------------------

    async def l_create(self, req: api.LeaseCreate) -> api.Lease:
        ns, id = req.namespace, req.lease.id
        pending = self._releases.get((ns, id))
        if pending is not None:
            # the old lease's release must not strip the new one's id from its blobs
            await asyncio.shield(pending)
        return await self._replayed(self._write(self.store.create_lease, ns, req.lease),
                                    lambda: self.store.get_lease(ns, id))

    async def l_delete(self, req: api.LeaseDelete) -> None:
        await self._replayed(self._write(self.store.delete_lease, req.namespace, req.id))
        # The content service's copy of the id goes after the answer: a collection ignores
        # ids of leases the database no longer has, so until then it only holds nothing.
        key = (req.namespace, req.id)
        task = self._releases[key] = asyncio.create_task(self._release(req.namespace, req.id))

        def forget(done: "asyncio.Task[None]") -> None:
            if self._releases.get(key) is done:
                del self._releases[key]
        task.add_done_callback(forget)
        await self._after_delete(req.sync)

    async def stop(self) -> None:
        await self.gc.stop()
        if self._releases:  # short calls: let them end rather than leave stale ids
            await asyncio.wait(list(self._releases.values()), timeout=_HELD_TIMEOUT)

    async def _release(self, namespace: str, lease: str) -> None:
        """Tell the content service the lease is gone (it keeps lease ids on blobs). While no
        content service answers (one restarting) it is asked again within _HELD_TIMEOUT; with
        none deployed there is nothing to release."""
        try:
            await ContentClient(self.bus, self.cfg.prefix, timeout=_HELD_TIMEOUT).release_lease(namespace, lease)
        except FlotillaError:
            pass

    async def l_list(self, req: api.ListRequest) -> list[api.Lease]:
        return await asyncio.to_thread(self.store.list_leases, req.namespace, req.filters)

    async def l_add(self, req: api.LeaseResourceRequest) -> None:
        await self._write(self.store.add_lease_resource, req.namespace, req.lease, req.resource)

    async def l_del_resource(self, req: api.LeaseResourceRequest) -> None:
        await self._write(self.store.delete_lease_resource, req.namespace, req.lease, req.resource)
        self.gc.schedule()

    async def l_resources(self, req: api.LeaseRef) -> list[api.Resource]:
        added = await asyncio.to_thread(self.store.list_lease_resources, req.namespace, req.id)
        # what was written under the lease is recorded with it by its store (the content
        # service keeps a blob's leases, the snapshots service a snapshot's), not here
        known = {(r.type, r.id) for r in added}
        held = [r for r in await self._held_by_lease(req.namespace, req.id) if (r.type, r.id) not in known]
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

    async def gc_run(self, _req: api.GCRequest) -> api.GCStats:
        return await self.gc.collect()

    async def start(self) -> None:
        routes: list[tuple[api.Route[Any, Any], Callable[[Any], Awaitable[Any]]]] = [
            (api.NAMESPACE_GET, self.ns_get),
            (api.NAMESPACE_LIST, self.ns_list),
            (api.NAMESPACE_CREATE, self.ns_create),
            (api.NAMESPACE_UPDATE, self.ns_update),
            (api.NAMESPACE_DELETE, self.ns_delete),
            (api.CONTAINER_GET, self.c_get),
            (api.CONTAINER_LIST, self.c_list),
            (api.CONTAINER_CREATE, self.c_create),
            (api.CONTAINER_UPDATE, self.c_update),
            (api.CONTAINER_DELETE, self.c_delete),
            (api.IMAGE_GET, self.i_get),
            (api.IMAGE_LIST, self.i_list),
            (api.IMAGE_CREATE, self.i_create),
            (api.IMAGE_UPDATE, self.i_update),
            (api.IMAGE_DELETE, self.i_delete),
            (api.LEASE_CREATE, self.l_create),
            (api.LEASE_DELETE, self.l_delete),
            (api.LEASE_LIST, self.l_list),
            (api.LEASE_ADD_RESOURCE, self.l_add),
            (api.LEASE_DELETE_RESOURCE, self.l_del_resource),
            (api.LEASE_LIST_RESOURCES, self.l_resources),
            (api.GC_RUN, self.gc_run),
        ]
        await self.bus.serve_shared(api.stem(self.cfg.prefix), routes)
        self.gc.start()
