"""Push an image from the content store to a registry: blobs first (in parallel), then manifests,
then the index or manifest under the tag."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flotilla.libs.distribution import (Credentials, Descriptor, Index, media, parse_manifest,
                                        parse_reference)
from flotilla.libs.distribution.auth import CredentialsFor
from flotilla.libs.errors import NotFound

from flotilla.libs.distribution.plan import ref_key

from .pull import Progress

if TYPE_CHECKING:
    from .client import Client


@dataclass
class PushOptions:
    credentials: CredentialsFor | Credentials | None = None
    plain_http: bool | None = None
    concurrency: int = 3
    progress: Callable[[Progress], None] | None = None


async def push(client: "Client", local: str, ref: str, opts: PushOptions | None = None) -> Descriptor:
    """Push the local image ``local`` as ``ref``; returns the pushed top descriptor."""
    opts = opts or PushOptions()
    reference = parse_reference(ref)
    from flotilla.libs.distribution.registry import RegistryClient  # loads the HTTP side

    registry = RegistryClient(opts.credentials, opts.plain_http)
    image = await client.images.get(local)
    limit = asyncio.Semaphore(max(1, opts.concurrency))

    def report(desc: Descriptor, offset: int, status: str) -> None:
        if opts.progress is not None:
            opts.progress(Progress(ref_key(desc), desc.digest, desc.media_type, offset, desc.size, status))

    async def blob(desc: Descriptor) -> None:
        async with limit:
            report(desc, 0, "uploading")
            sent = await registry.push_blob(reference, desc, client.content.read(desc.digest),
                                            progress=lambda n: report(desc, n, "uploading"))
            report(desc, desc.size, "done" if sent else "exists")

    async def manifest(desc: Descriptor, data: bytes, obj: str) -> None:
        await registry.push_manifest(reference, obj, desc.media_type, data)
        report(desc, desc.size, "done")

    top = image.target
    top_data = await client.content.read_all(top.digest)
    doc = parse_manifest(top_data, top.media_type)
    manifests: list[tuple[Descriptor, bytes]] = []
    if isinstance(doc, Index):
        missing = [child for child in doc.manifests if not await client.content.exists(child.digest)]
        if missing:
            what = ", ".join(str(c.platform) if c.platform else c.digest for c in missing)
            raise NotFound(f"image {local!r} is an index whose manifests for {what} are not in the content "
                           "store (pulled for one platform?): pull it with all platforms to push it: not found")
        for child in doc.manifests:
            if media.is_manifest(child.media_type):
                manifests.append((child, await client.content.read_all(child.digest)))
    else:
        manifests.append((top, top_data))
    for desc, data in manifests:
        m = parse_manifest(data, desc.media_type)
        assert not isinstance(m, Index)
        await asyncio.gather(*(blob(d) for d in [m.config, *m.layers]))
        if isinstance(doc, Index):
            await manifest(desc, data, desc.digest)
    await manifest(top, top_data, reference.tag or top.digest)
    return top
