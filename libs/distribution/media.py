"""Media types and descriptors of OCI and Docker schema 2 images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
CONFIGS = (OCI_CONFIG, DOCKER_CONFIG)
LAYERS = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_ND_GZIP,
          DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_FOREIGN_GZIP)
# what a registry is asked for when resolving a reference (containerd's order)
ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"))


def is_manifest(media_type: str) -> bool:
    return media_type in MANIFESTS


def is_index(media_type: str) -> bool:
    return media_type in INDEXES


def is_layer(media_type: str) -> bool:
    return media_type in LAYERS or ".layer." in media_type or "rootfs.diff" in media_type


def compression(media_type: str) -> str:
    """"gzip", "zstd" or "" (plain tar) for a layer's media type."""
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        return "zstd"
    if media_type.endswith("gzip"):
        return "gzip"
    return ""


@dataclass
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> "Platform | None":
        if not data:
            return None
        return Platform(str(data.get("os", "")), str(data.get("architecture", "")), str(data.get("variant", "")))


@dataclass
class Descriptor:
    """An OCI content descriptor."""
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> "Descriptor":
        from .errors import BadManifest
        try:
            return Descriptor(str(data["mediaType"]) if "mediaType" in data else "",
                              str(data["digest"]), int(data["size"]),
                              dict(data.get("annotations") or {}),
                              Platform.from_json(data.get("platform")),
                              list(data.get("urls") or []))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadManifest(f"invalid descriptor {data!r}: {exc}") from None
