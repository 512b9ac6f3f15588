"""One server-side pull through the services' contracts: blobs into the content service (layers
in parallel, resumed from an interrupted ingest, never fetched twice), the image record in the
metadata service, layers unpacked through the snapshots service as soon as each and its parent
are in. Parents are written after their children, all under a lease deleted at the end."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hashlib
import time
import uuid
from collections.abc import Callable

from flotilla.libs.api.content import ContentClient, Info
from flotilla.libs.api.metadata import Descriptor as MdDescriptor
from flotilla.libs.api.metadata import Image, MetadataClient, expiring_lease
from flotilla.libs.api.snapshots import Descriptor as SnDescriptor
from flotilla.libs.api.snapshots import SnapshotsClient
from flotilla.libs.api.transfer import PullProgress, PullRequest, PullResult
from flotilla.libs.distribution import (Credentials, Descriptor, DigestMismatch, Index, Manifest,
                                        RegistryClient, diff_ids, parse_manifest, parse_reference, platforms)
from flotilla.libs.distribution import plan
from flotilla.libs.distribution.plan import ref_key
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, FlotillaError, NotFound, Unavailable

Report = Callable[[PullProgress], None]
LEASE_EXPIRE = _dt.timedelta(hours=24)
LOCKED_WAIT = 600.0  # seconds to wait for an ingest another pull holds


class _ParentNeeded(Exception):
    """A layer the snapshots service would not apply or stack detached: apply it onto its parent."""


def chain_ids(ids: list[str]) -> list[str]:
    out: list[str] = []
    for d in ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


class Puller:
    def __init__(self, content: ContentClient, metadata: MetadataClient, snapshots: SnapshotsClient,
                 req: PullRequest, report: Report) -> None:
        self.content, self.metadata, self.snapshots = content, metadata, snapshots
        self.req, self.ns = req, req.namespace
        self.ref = parse_reference(req.ref)
        creds = Credentials(req.username, req.password) if req.username else None
        self.registry = RegistryClient(creds, req.plain_http)
        self.limit = asyncio.Semaphore(max(1, req.concurrency))
        self.want = platforms.parse(req.platform) if req.platform else platforms.host()
        self.source = {f"containerd.io/distribution.source.{self.ref.host}": self.ref.repository}
        self.report_fn = report
        self.lease = ""
        self.fetched = 0
        self.chain_id = ""

    def report(self, desc: Descriptor, offset: int, status: str) -> None:
        self.report_fn(PullProgress(ref_key(desc), desc.digest, desc.media_type, offset, desc.size, status))

    async def _label(self, digest: str, labels: dict[str, str]) -> None:
        await self.content.update(self.ns, Info(digest, labels=labels), [f"labels.{k}" for k in labels])

    async def fetch_blob(self, desc: Descriptor, labels: dict[str, str] | None = None,
                         data: bytes | None = None) -> None:
        labels = {**self.source, **(labels or {})}
        if not await self._present(desc, labels):
            await self._download(desc, labels, data)

    async def _present(self, desc: Descriptor, labels: dict[str, str]) -> bool:
        """True (and ``labels`` set) when the store has the blob already."""
        if not await self.content.exists(self.ns, desc.digest):
            return False
        await self._label(desc.digest, labels)
        self.report(desc, desc.size, "exists")
        return True

    async def _download(self, desc: Descriptor, labels: dict[str, str], data: bytes | None) -> None:
        """Fetch into the content store; waits for a download slot first, in call order."""
        self.report(desc, 0, "waiting")
        key = ref_key(desc)
        async with self.limit:
            try:
                w = await self._open_writer(key, desc)
            except AlreadyExists:
                await self._label(desc.digest, labels)
                self.report(desc, desc.size, "exists")
                return
            try:
                async with w:
                    if not w.session.shared:
                        if w.offset > desc.size:
                            await w.truncate()
                        self.report(desc, w.offset, "downloading")
                        if data is not None:
                            if w.offset:
                                await w.truncate()
                            await w.write(data)
                        elif w.offset < desc.size:
                            start = w.offset

                            async def sink(chunk: bytes) -> None:
                                await w.write(chunk)
                            # the content service hashes what it is given and checks at commit
                            await self.registry.fetch_blob(self.ref, desc, sink, offset=w.offset, verify=False,
                                                           progress=lambda n: self.report(desc, n, "downloading"))
                            self.fetched += desc.size - start
                    try:
                        await w.commit(desc.size, desc.digest, labels)
                    except AlreadyExists:
                        await self._label(desc.digest, labels)
                    except FailedPrecondition as exc:  # all its bytes, but not the ones named
                        raise DigestMismatch(f"blob {desc.digest} from {self.ref.name}: digest mismatch: "
                                             f"{exc.message}") from None
            except asyncio.CancelledError:
                raise  # the ingest stays: the next pull resumes it
            except BaseException:
                await asyncio.shield(self._abort(key))
                self.report(desc, 0, "failed")
                raise
        self.report(desc, desc.size, "done")

    async def _open_writer(self, key: str, desc: Descriptor):  # type: ignore[no-untyped-def]
        """Open the ingest; while another pull holds it (locked), wait as containerd's client does:
        that pull either commits it (then AlreadyExists) or lets it go (then we resume it)."""
        delay = 0.05
        deadline = asyncio.get_running_loop().time() + LOCKED_WAIT
        while True:
            try:
                return await self.content.writer(self.ns, key, desc.size, desc.digest, self.lease)
            except Unavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                self.report(desc, 0, "waiting")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _abort(self, key: str) -> None:
        try:
            await self.content.abort(self.ns, key)
        except FlotillaError:
            pass

    async def unpack(self, config: Descriptor, layers: list[Descriptor], ids: list[str],
                     fetches: list["asyncio.Task[None]"]) -> None:
        """Each layer is applied as soon as it is in; on overlayfs, layers above the first are
        applied apart, in parallel (detached), then committed in order onto each other."""
        if len(layers) != len(ids):
            raise FailedPrecondition(f"image has {len(layers)} layers but its config lists {len(ids)} diff ids: "
                                     "failed precondition")
        chain = chain_ids(ids)
        loop = asyncio.get_running_loop()
        committed: list[asyncio.Future[None]] = [loop.create_future() for _ in layers]
        steps = [asyncio.create_task(self._unpack_layer(i, layers[i], ids[i], chain, fetches[i], committed))
                 for i in range(len(layers))]
        try:
            await asyncio.gather(*steps)
        finally:
            for step in steps:
                step.cancel()
            await asyncio.gather(*steps, return_exceptions=True)
            for c in committed:
                if not c.done():
                    c.cancel()
        if chain:
            sn = self.req.snapshotter
            await self._label(config.digest, {f"containerd.io/gc.ref.snapshot.{sn}": chain[-1]})
            self.chain_id = chain[-1]

    async def _unpack_layer(self, i: int, layer: Descriptor, diff_id: str, chain: list[str],
                            fetch: "asyncio.Task[None]", committed: list["asyncio.Future[None]"]) -> None:
        try:
            await asyncio.shield(fetch)
            below = committed[i - 1] if i else None
            sn = self.req.snapshotter
            try:
                await self.snapshots.stat(self.ns, sn, chain[i])
                self.report(layer, layer.size, "exists")
                committed[i].set_result(None)
                return
            except NotFound:
                pass
            self.report(layer, 0, "unpacking")
            applied = None
            if below is not None and sn == "overlayfs":
                with contextlib.suppress(_ParentNeeded):
                    applied = await self._extract(layer, diff_id, chain[i], chain[i - 1], below, detached=True)
            if applied is None:  # the bottom layer, another snapshotter, or one that needs its parent
                if below is not None:
                    await below
                applied = await self._extract(layer, diff_id, chain[i], chain[i - 1] if i else "", None)
            committed[i].set_result(None)
            if applied:
                await self._label(layer.digest, {"containerd.io/uncompressed": applied})
            self.report(layer, layer.size, "unpacked")
        except Exception as exc:
            if not committed[i].done():
                committed[i].set_exception(exc)
                committed[i].exception()  # retrieved: the layer above may never look
            raise
        finally:
            if not committed[i].done():  # cancelled
                committed[i].cancel()

    async def _extract(self, layer: Descriptor, diff_id: str, chain_id: str, parent: str,
                       below: "asyncio.Future[None] | None", detached: bool = False) -> str:
        """Prepare, apply, commit as ``chain_id``; the diff id applied ('' when another pull
        committed it first). Detached: prepared without ``parent``, stacked on it once
        ``below`` is committed; _ParentNeeded (nothing left behind) when the snapshots service
        refuses that (the layer needs its parent's files, or the parent's root owner)."""
        sn = self.req.snapshotter
        labels = {"containerd.io/snapshot.ref": chain_id}
        key = f"extract-{time.time_ns() % 10**9}-{uuid.uuid4().hex[:6]} {chain_id}"
        mounts = await self.snapshots.prepare(self.ns, sn, key, "" if detached else parent, labels, self.lease)
        try:
            try:
                applied = await self.snapshots.apply(
                    self.ns, SnDescriptor(layer.media_type, layer.digest, layer.size, dict(layer.annotations)),
                    mounts, detached=detached)
            except FailedPrecondition:
                if detached:
                    raise _ParentNeeded() from None
                raise
            if applied.digest != diff_id:
                raise FailedPrecondition(f"wrong diff id calculated on extraction {diff_id} (got {applied.digest})"
                                         ": failed precondition")
            if below is not None:
                await below
            try:
                await self.snapshots.commit(self.ns, sn, chain_id, key, labels, self.lease,
                                            parent=parent if detached else "")
            except AlreadyExists:
                await self.snapshots.remove(self.ns, sn, key)
                return ""
            except FailedPrecondition:
                if detached:
                    raise _ParentNeeded() from None
                raise
        except BaseException:
            try:
                await asyncio.shield(self.snapshots.remove(self.ns, sn, key))
            except FlotillaError:
                pass
            raise
        return applied.digest

    async def pull_manifest(self, desc: Descriptor, doc: Manifest, data: bytes, unpack: bool) -> None:
        await self.fetch_blob(doc.config)

        # lookups first, all at once; then the downloads ask for slots bottom layer first (the
        # unpack needs them in that order), not in the order the lookups happened to answer
        present = await asyncio.gather(*(self._present(d, self.source) for d in doc.layers))

        async def layer(i: int, d: Descriptor) -> None:
            if not present[i]:
                await self._download(d, self.source, None)

        fetches = [asyncio.create_task(layer(i, d)) for i, d in enumerate(doc.layers)]
        try:
            if unpack:
                ids = diff_ids(await self.content.read_all(self.ns, doc.config.digest))
                await self.unpack(doc.config, doc.layers, ids, fetches)
            await asyncio.gather(*fetches)
        finally:
            for f in fetches:
                f.cancel()
            await asyncio.gather(*fetches, return_exceptions=True)
        await self.fetch_blob(desc, plan.manifest_labels(doc), data)

    async def manifest(self, desc: Descriptor) -> tuple[Manifest | Index, bytes]:
        data = await self.registry.fetch_manifest(self.ref, desc)
        return parse_manifest(data, desc.media_type, f"{self.ref} {desc.digest}"), data

    async def run(self) -> PullResult:
        lease = await self.metadata.create_lease(self.ns, expiring_lease("flotilla-transfer", LEASE_EXPIRE))
        self.lease = lease.id
        try:
            return await self._run()
        finally:
            try:
                await asyncio.shield(self.metadata.delete_lease(self.ns, self.lease))
            except FlotillaError:
                pass

    async def _run(self) -> PullResult:
        top = await self.registry.resolve(self.ref)
        doc, data = await self.manifest(top)
        if isinstance(doc, Index):
            chosen = plan.chosen_manifests(doc, self.want, self.req.all_platforms)
            for child in chosen:
                child_doc, child_data = await self.manifest(child)
                await self.pull_manifest(child, plan.child_manifest(self.ref, child, child_doc), child_data,
                                         plan.unpacks(child, self.want, self.req.unpack, self.req.all_platforms))
            await self.fetch_blob(top, plan.index_labels(doc, chosen), data)
        else:
            await self.pull_manifest(top, doc, data, self.req.unpack)
        name = self.req.ref if self.req.ref == str(self.ref) else str(self.ref)
        image = Image(name, {}, MdDescriptor(top.media_type, top.digest, top.size))
        try:
            await self.metadata.create_image(self.ns, image)
        except AlreadyExists:
            await self.metadata.update_image(self.ns, image, ["target"])
        self.report_fn(PullProgress(name, top.digest, top.media_type, top.size, top.size, "done"))
        return PullResult(name, top.digest, top.media_type, top.size, self.fetched, self.chain_id)
