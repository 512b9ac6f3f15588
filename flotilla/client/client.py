"""``Client``: one connection to a containerd-API server (Flotilla's gateway or containerd)."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from .containers import Container, Containers
from .content import Content
from .diff import Diff
from .events import Events
from .images import Image, Images
from .imageutil import ResolvedImage, resolve_manifest
from .leases import Leases
from .namespaces import Namespaces
from ._conn import Conn
from .pull import PullOptions, pull
from .push import PushOptions, push
from .snapshots import DEFAULT_SNAPSHOTTER, Snapshots
from .spec import SpecOpt, generate_spec, with_image_config
from .tasks import Tasks
from .version import VersionService
from flotilla.libs.distribution import Descriptor, Platform
from flotilla.libs.errors import NotFound, Unimplemented

DEFAULT_ADDRESS = "/run/flotilla/flotilla.sock"
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"


class Client:
    """``async with Client(address, namespace) as c: await c.pull(ref)``.

    Each API area is an attribute: ``namespaces``, ``version``, ``content``, ``images``,
    ``containers``, ``leases``, ``snapshots`` (call it with a name for another snapshotter),
    ``diff``, ``tasks``, ``events``. ``pull``, ``push`` and ``new_container`` compose them.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = "default") -> None:
        self.address = address
        self.namespace = namespace
        self._conn = Conn.open(address, namespace)
        self.namespaces = Namespaces(self._conn)
        self.version = VersionService(self._conn)
        self.content = Content(self._conn)
        self.images = Images(self._conn)
        self.containers = Containers(self._conn)
        self.leases = Leases(self._conn)
        self.snapshots = Snapshots(self._conn, DEFAULT_SNAPSHOTTER)
        self.diff = Diff(self._conn)
        self.tasks = Tasks(self._conn)
        self.events = Events(self._conn)

    def with_namespace(self, namespace: str) -> "Client":
        """Another client on the same server in ``namespace`` (its own channel)."""
        return Client(self.address, namespace)

    async def close(self) -> None:
        await self._conn.channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- images
    async def pull(self, ref: str, opts: PullOptions | None = None, *, server_side: bool | None = False,
                   **kw: Any) -> Image:
        """Pull ``ref`` (keywords are PullOptions fields): client-side as containerd's client does
        (default), server-side by Flotilla's transfer service (``server_side=True``), or the
        server's if it has one and else our own (``server_side=None``)."""
        opts = opts or PullOptions(**kw)
        if server_side is False:
            return await pull(self, ref, opts)
        from .transfer import server_pull
        try:
            return await server_pull(self, ref, opts)
        except Unimplemented:
            if server_side:
                raise
            return await pull(self, ref, opts)

    async def push(self, local: str, ref: str | None = None, opts: PushOptions | None = None, *,
                   server_side: bool | None = False, **kw: Any) -> Descriptor:
        """Push the local image ``local`` as ``ref``; ``server_side`` as for ``pull``."""
        opts = opts or PushOptions(**kw)
        if server_side is False:
            return await push(self, local, ref or local, opts)
        from .transfer import server_push
        try:
            return await server_push(self, local, ref or local, opts)
        except Unimplemented:
            if server_side:
                raise
            return await push(self, local, ref or local, opts)

    async def resolve_image(self, name: str, platform: Platform | None = None) -> ResolvedImage:
        image = await self.images.get(name)
        return await resolve_manifest(self.content, image.target, platform)

    # ---- containers
    async def new_container(self, id: str, image: str, *opts: SpecOpt, args: list[str] | None = None,
                            snapshotter: str = DEFAULT_SNAPSHOTTER, runtime: str = "io.containerd.runc.v2",
                            labels: dict[str, str] | None = None, readonly: bool = False) -> Container:
        """A container from an unpacked image: a new snapshot on the image's top layer and a spec
        from the image's config, then ``opts`` (as ctr run builds it)."""
        # under a lease, as containerd's NewContainer: the new snapshot is not referenced by
        # anything until the container record exists, and a GC in between would sweep it
        async with self.leases.scope(expire=_dt.timedelta(minutes=10)):
            resolved = await self.resolve_image(image)
            snaps = self.snapshots(snapshotter)
            parent = resolved.chain_id
            if not await snaps.exists(parent):
                raise NotFound(f"image {image!r} is not unpacked in {snapshotter}: snapshot {parent}: not found")
            if readonly:
                await snaps.view(id, parent)
            else:
                await snaps.prepare(id, parent)
            try:
                from .spec import with_default_unix_devices
                spec = generate_spec(self.namespace, id, with_default_unix_devices,
                                     with_image_config(resolved.config, args or ()), *opts)
                labels = {STOP_SIGNAL_LABEL: resolved.config.stop_signal or "SIGTERM", **(labels or {})}
                return await self.containers.create(Container(id, image, spec, snapshotter, id, runtime, labels))
            except BaseException:
                await snaps.remove(id)
                raise

    async def delete_container(self, id: str, *, snapshot: bool = True) -> None:
        """The container record and (by default) its snapshot, as ``ctr containers rm`` does."""
        container = await self.containers.get(id)
        await self.containers.delete(id)
        if snapshot and container.snapshot_key:
            try:
                await self.snapshots(container.snapshotter).remove(container.snapshot_key)
            except NotFound:
                pass

    async def rootfs(self, container: Container) -> list:  # type: ignore[type-arg]
        """The mounts of the container's snapshot (what Tasks.Create needs)."""
        if not container.snapshot_key:
            return []
        return await self.snapshots(container.snapshotter).mounts(container.snapshot_key)


def dumps(obj: Any) -> str:
    from .types import jsonable
    return json.dumps(jsonable(obj), indent=2, sort_keys=True)
