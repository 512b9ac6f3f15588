"""What a pull fetches and how it labels it: shared by the client-side pull and the transfer service."""

from __future__ import annotations

from . import media, platforms
from .errors import BadManifest
from .manifest import Index, Manifest
from .media import Descriptor, Platform


def ref_key(desc: Descriptor) -> str:
    """containerd's remotes.MakeRefKey: the ingest ref, stable across attempts and between the
    client-side and server-side pulls, so either resumes the other's interrupted ingest."""
    if media.is_manifest(desc.media_type):
        kind = "manifest"
    elif media.is_index(desc.media_type):
        kind = "index"
    elif media.is_layer(desc.media_type):
        kind = "layer"
    elif desc.media_type in media.CONFIGS:
        kind = "config"
    else:
        kind = "unknown"
    return f"{kind}-{desc.digest}"


def chosen_manifests(index: Index, want: Platform, all_platforms: bool) -> list[Descriptor]:
    """The manifests of ``index`` a pull fetches: every one, or the best for ``want``."""
    if all_platforms:
        return [m for m in index.manifests if media.is_manifest(m.media_type) or not m.media_type]
    return [platforms.select(index.manifests, want)]


def child_manifest(ref: object, child: Descriptor, doc: Manifest | Index) -> Manifest:
    if not isinstance(doc, Manifest):
        raise BadManifest(f"{ref}: nested index {child.digest} is not supported: invalid argument")
    return doc


def unpacks(child: Descriptor, want: Platform, unpack: bool, all_platforms: bool) -> bool:
    """Only the host's platform is unpacked when a pull fetches every platform."""
    return unpack and (not all_platforms or platforms.matches(want, child.platform))


def manifest_labels(doc: Manifest) -> dict[str, str]:
    """The GC references a manifest carries to its config and layers."""
    labels = {"containerd.io/gc.ref.content.config": doc.config.digest}
    labels.update({f"containerd.io/gc.ref.content.l.{i}": layer.digest for i, layer in enumerate(doc.layers)})
    return labels


def index_labels(index: Index, chosen: list[Descriptor]) -> dict[str, str]:
    """The GC references an index carries to the manifests that were fetched."""
    return {f"containerd.io/gc.ref.content.m.{i}": m.digest for i, m in enumerate(index.manifests) if m in chosen}
