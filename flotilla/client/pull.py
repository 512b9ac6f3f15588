"""Client-side pull, as containerd's Go client does it: resolve, fetch every blob into the content
store under a lease (layers in parallel, resuming interrupted ingests), record the image, unpack.

Parents (manifests, indexes) are written after their children, so an interrupted or failed pull
never leaves an image whose blobs are missing; a blob already in the store is not fetched again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flotilla.libs.distribution import (Credentials, Descriptor, Index, Manifest, Platform,
                                        diff_ids, parse_manifest, parse_reference,
                                        platforms)
from flotilla.libs.distribution import plan
from flotilla.libs.distribution.auth import CredentialsFor
from flotilla.libs.distribution.plan import ref_key
from flotilla.libs.distribution.reference import Reference
from flotilla.libs.errors import AlreadyExists, FlotillaError

from .images import Image
from .unpack import unpack_layers

if TYPE_CHECKING:
    from .client import Client

DEFAULT_CONCURRENCY = 3


@dataclass
class Progress:
    """One blob's state: waiting, downloading, exists, done, unpacking, unpacked, failed."""
    key: str              # containerd's ref key: "layer-sha256:...", "manifest-sha256:..."
    digest: str
    media_type: str
    offset: int
    total: int
    status: str


@dataclass
class PullOptions:
    platform: Platform | None = None          # the host's by default
    all_platforms: bool = False
    unpack: bool = True
    snapshotter: str = "overlayfs"
    credentials: CredentialsFor | Credentials | None = None
    plain_http: bool | None = None            # None: plain HTTP for loopback registries only
    concurrency: int = DEFAULT_CONCURRENCY
    progress: Callable[[Progress], None] | None = None
    labels: dict[str, str] = field(default_factory=dict)


class _Puller:
    def __init__(self, client: "Client", ref: Reference, opts: PullOptions, name: str) -> None:
        self.client = client
        self.name = name
        self.ref = ref
        self.opts = opts
        from flotilla.libs.distribution.registry import RegistryClient  # loads the HTTP side

        self.registry = RegistryClient(opts.credentials, opts.plain_http)
        self.limit = asyncio.Semaphore(max(1, opts.concurrency))
        self.source_label = {f"containerd.io/distribution.source.{ref.host}": ref.repository}
        self.want = opts.platform or platforms.host()

    def report(self, desc: Descriptor, offset: int, status: str) -> None:
        if self.opts.progress is not None:
            self.opts.progress(Progress(ref_key(desc), desc.digest, desc.media_type, offset, desc.size, status))

    async def fetch_blob(self, desc: Descriptor, labels: dict[str, str] | None = None) -> None:
        """``desc`` into the content store (resuming an earlier ingest of the same ref)."""
        content = self.client.content
        key = ref_key(desc)
        labels = {**self.source_label, **(labels or {})}
        if await content.exists(desc.digest):
            await content.set_labels(desc.digest, labels)
            self.report(desc, desc.size, "exists")
            return
        self.report(desc, 0, "waiting")
        async with self.limit:
            try:
                writer = await content.writer(key, desc.size, desc.digest)
            except AlreadyExists:
                await content.set_labels(desc.digest, labels)
                self.report(desc, desc.size, "exists")
                return
            try:
                if writer.offset > desc.size:
                    writer.offset = 0
                self.report(desc, writer.offset, "downloading")
                if writer.offset < desc.size:
                    await self.registry.fetch_blob(
                        self.ref, desc, writer.write, offset=writer.offset,
                        progress=lambda n: self.report(desc, n, "downloading"))
                await writer.commit(desc.size, desc.digest, labels)
            except AlreadyExists:
                await writer.close()
            except asyncio.CancelledError:
                await writer.close()   # keep what we have: the next pull resumes it
                raise
            except BaseException:
                await writer.close()
                await asyncio.shield(self._abort(key))
                self.report(desc, 0, "failed")
                raise
        self.report(desc, desc.size, "done")

    async def _abort(self, key: str) -> None:
        try:
            await self.client.content.abort(key)
        except FlotillaError:
            pass

    async def put_small(self, desc: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        await self.client.content.write_blob(ref_key(desc), data, desc.digest, {**self.source_label, **labels})
        self.report(desc, desc.size, "done")

    async def manifest(self, desc: Descriptor) -> tuple[Manifest | Index, bytes]:
        data = await self.registry.fetch_manifest(self.ref, desc)
        return parse_manifest(data, desc.media_type, f"{self.ref} {desc.digest}"), data

    async def pull_manifest(self, desc: Descriptor, doc: Manifest, data: bytes, unpack: bool) -> None:
        """Config and layers (in parallel), unpacking as layers arrive, then the manifest itself."""
        await self.fetch_blob(doc.config)
        done = [asyncio.Event() for _ in doc.layers]

        async def layer(i: int, d: Descriptor) -> None:
            await self.fetch_blob(d)
            done[i].set()

        fetches = [asyncio.create_task(layer(i, d)) for i, d in enumerate(doc.layers)]

        async def ready(i: int) -> None:
            while not done[i].is_set():
                for f in fetches:
                    if f.done() and not f.cancelled() and f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
                waiter = asyncio.ensure_future(done[i].wait())
                await asyncio.wait([waiter, *[f for f in fetches if not f.done()]],
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

        try:
            if unpack:
                ids = diff_ids(await self.client.content.read_all(doc.config.digest))
                await unpack_layers(self.client.content, self.client.snapshots(self.opts.snapshotter),
                                    self.client.diff, doc.config, doc.layers, ids, ready)
            await asyncio.gather(*fetches)
        finally:
            for f in fetches:
                f.cancel()
            await asyncio.gather(*fetches, return_exceptions=True)
        # the manifest last: its labels reference blobs that are all there now
        await self.put_small(desc, data, plan.manifest_labels(doc))

    async def run(self) -> Image:
        top = await self.registry.resolve(self.ref)
        doc, data = await self.manifest(top)
        if isinstance(doc, Index):
            chosen = plan.chosen_manifests(doc, self.want, self.opts.all_platforms)
            for child in chosen:
                child_doc, child_data = await self.manifest(child)
                await self.pull_manifest(child, plan.child_manifest(self.ref, child, child_doc), child_data,
                                         plan.unpacks(child, self.want, self.opts.unpack, self.opts.all_platforms))
            await self.put_small(top, data, plan.index_labels(doc, chosen))
        else:
            await self.pull_manifest(top, doc, data, self.opts.unpack)
        return await self.client.images.put(Image(self.name, top, dict(self.opts.labels)))


async def pull(client: "Client", ref: str, opts: PullOptions | None = None) -> Image:
    """Pull ``ref`` into the client's namespace; returns the image record."""
    opts = opts or PullOptions()
    reference = parse_reference(ref)
    async with client.leases.scope():
        return await _Puller(client, reference, opts, ref if ref == str(reference) else str(reference)).run()

