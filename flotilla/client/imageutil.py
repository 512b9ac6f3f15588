"""Reading an image back from the content store: manifest for a platform, config, chain ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flotilla.libs.distribution import (Descriptor, Index, Manifest, Platform, diff_ids, parse_manifest,
                                        platforms)
from flotilla.libs.errors import NotFound

from .content import Content
from .spec import ImageConfig


def chain_ids(ids: list[str]) -> list[str]:
    """containerd's identity.ChainIDs: chain[i] = sha256(chain[i-1] + " " + diff_id[i])."""
    out: list[str] = []
    for d in ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


@dataclass
class ResolvedImage:
    manifest_desc: Descriptor
    manifest: Manifest
    config_bytes: bytes
    diff_ids: list[str]

    @property
    def config(self) -> ImageConfig:
        return ImageConfig.from_json(self.config_bytes)

    @property
    def chain_id(self) -> str:
        return chain_ids(self.diff_ids)[-1] if self.diff_ids else ""

    @property
    def size(self) -> int:
        return self.manifest_desc.size + self.manifest.config.size + sum(l.size for l in self.manifest.layers)


async def resolve_manifest(content: Content, target: Descriptor, platform: Platform | None = None) -> ResolvedImage:
    """The manifest of ``target`` (an index is narrowed to ``platform``, the host's by default)."""
    want = platform or platforms.host()
    desc = target
    for _ in range(4):  # index -> manifest (nested indexes are rare; bounded)
        doc = parse_manifest(await content.read_all(desc.digest), desc.media_type, f"{desc.media_type} {desc.digest}")
        if isinstance(doc, Index):
            present = []
            for child in doc.manifests:
                if platforms.matches(want, child.platform) and await content.exists(child.digest):
                    present.append(child)
            if not present:
                raise NotFound(f"image {target.digest}: no manifest for platform {want} in the content store: not found")
            desc = present[0]
            continue
        config = await content.read_all(doc.config.digest)
        return ResolvedImage(desc, doc, config, diff_ids(config))
    raise NotFound(f"image {target.digest}: index nesting too deep: not found")


async def platforms_of(content: Content, target: Descriptor) -> list[str]:
    """The platforms an image record offers (as ``ctr images ls`` shows them)."""
    try:
        doc = parse_manifest(await content.read_all(target.digest), target.media_type)
    except NotFound:
        return []
    if isinstance(doc, Index):
        return [str(platforms.normalize(m.platform)) for m in doc.manifests if m.platform]
    try:
        import json
        cfg = json.loads(await content.read_all(doc.config.digest))
        return [f"{cfg.get('os', 'linux')}/{cfg.get('architecture', '')}"]
    except (NotFound, ValueError):
        return []
