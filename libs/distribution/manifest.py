"""Parsing manifests and indexes (OCI and Docker schema 2) with clear errors for garbage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import media
from .errors import BadManifest
from .media import Descriptor


@dataclass
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Index:
    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


def parse(data: bytes, media_type: str = "", what: str = "manifest") -> Manifest | Index:
    """Parse ``data``; ``media_type`` is the descriptor's (the document's own wins if present)."""
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadManifest(f"{what}: not valid JSON ({exc}): invalid argument") from None
    if not isinstance(doc, dict):
        raise BadManifest(f"{what}: not a JSON object: invalid argument")
    mt = str(doc.get("mediaType") or media_type or "")
    if doc.get("schemaVersion") == 1 or "signatures" in doc or mt.startswith(
            "application/vnd.docker.distribution.manifest.v1"):
        raise BadManifest(f"{what}: Docker schema 1 manifests are not supported: invalid argument")
    if doc.get("schemaVersion") != 2:
        raise BadManifest(f"{what}: schemaVersion {doc.get('schemaVersion')!r} is not 2: invalid argument")
    if "manifests" in doc or media.is_index(mt):
        items = doc.get("manifests")
        if not isinstance(items, list):
            raise BadManifest(f"{what}: index without a manifests list: invalid argument")
        return Index(mt or media.OCI_INDEX, [Descriptor.from_json(d) for d in items],
                     dict(doc.get("annotations") or {}))
    if "config" in doc or media.is_manifest(mt):
        layers = doc.get("layers")
        if not isinstance(doc.get("config"), dict) or not isinstance(layers, list):
            raise BadManifest(f"{what}: manifest without config and layers: invalid argument")
        return Manifest(mt or media.OCI_MANIFEST, Descriptor.from_json(doc["config"]),
                        [Descriptor.from_json(d) for d in layers], dict(doc.get("annotations") or {}))
    raise BadManifest(f"{what}: unknown document type {mt!r}: invalid argument")


def diff_ids(config: bytes) -> list[str]:
    """The uncompressed layer digests of an image configuration."""
    try:
        doc = json.loads(config)
        ids = doc["rootfs"]["diff_ids"]
        if not isinstance(ids, list):
            raise TypeError("diff_ids is not a list")
        return [str(i) for i in ids]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadManifest(f"image config: no rootfs.diff_ids ({exc}): invalid argument") from None
