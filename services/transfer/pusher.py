"""One server-side push: blobs from the content service to the registry (in parallel, skipped
when the registry has them), then manifests, then the index or manifest under the tag."""

from __future__ import annotations

import asyncio

from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.metadata import MetadataClient
from flotilla.libs.api.transfer import PullProgress, PushRequest, PushResult
from flotilla.libs.distribution import (Credentials, Descriptor, Index, RegistryClient, media, parse_manifest,
                                        parse_reference)
from flotilla.libs.errors import NotFound

from flotilla.libs.distribution.plan import ref_key

from .puller import Report


class Pusher:
    def __init__(self, content: ContentClient, metadata: MetadataClient, req: PushRequest, report: Report) -> None:
        self.content, self.metadata, self.req, self.ns = content, metadata, req, req.namespace
        self.ref = parse_reference(req.ref or req.name)
        creds = Credentials(req.username, req.password) if req.username else None
        self.registry = RegistryClient(creds, req.plain_http)
        self.limit = asyncio.Semaphore(max(1, req.concurrency))
        self.report_fn = report
        self.sent = 0

    def report(self, desc: Descriptor, offset: int, status: str) -> None:
        self.report_fn(PullProgress(ref_key(desc), desc.digest, desc.media_type, offset, desc.size, status))

    async def blob(self, desc: Descriptor) -> None:
        async with self.limit:
            self.report(desc, 0, "uploading")
            sent = await self.registry.push_blob(self.ref, desc, self.content.read(self.ns, desc.digest),
                                                 progress=lambda n: self.report(desc, n, "uploading"))
            if sent:
                self.sent += desc.size
            self.report(desc, desc.size, "done" if sent else "exists")

    async def run(self) -> PushResult:
        image = await self.metadata.get_image(self.ns, self.req.name)
        t = image.target
        top = Descriptor(t.media_type, t.digest, t.size, dict(t.annotations))
        top_data = await self.content.read_all(self.ns, top.digest)
        doc = parse_manifest(top_data, top.media_type)
        manifests: list[tuple[Descriptor, bytes]] = []
        if isinstance(doc, Index):
            missing = [child for child in doc.manifests if not await self.content.exists(self.ns, child.digest)]
            if missing:
                what = ", ".join(str(c.platform) if c.platform else c.digest for c in missing)
                raise NotFound(f"image {self.req.name!r} is an index whose manifests for {what} are not in the "
                               "content store (pulled for one platform?): pull it with all platforms to push it: "
                               "not found")
            for child in doc.manifests:
                if media.is_manifest(child.media_type):
                    manifests.append((child, await self.content.read_all(self.ns, child.digest)))
        else:
            manifests.append((top, top_data))
        for desc, data in manifests:
            m = parse_manifest(data, desc.media_type)
            assert not isinstance(m, Index)
            await asyncio.gather(*(self.blob(d) for d in [m.config, *m.layers]))
            if isinstance(doc, Index):
                await self.registry.push_manifest(self.ref, desc.digest, desc.media_type, data)
                self.report(desc, desc.size, "done")
        await self.registry.push_manifest(self.ref, self.ref.tag or top.digest, top.media_type, top_data)
        self.report_fn(PullProgress(str(self.ref), top.digest, top.media_type, top.size, top.size, "done"))
        return PushResult(str(self.ref), top.digest, top.media_type, top.size, self.sent)
