"""Image references: ``host[:port]/path[:tag][@digest]`` as containerd's docker resolver reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgument

DOCKER_HUB = "docker.io"
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_PATH = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


@dataclass(frozen=True)
class Reference:
    host: str          # registry host as written, e.g. "127.0.0.1:5000" or "docker.io"
    repository: str    # e.g. "library/busybox"
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The reference without tag or digest: ``host/repository``."""
        return f"{self.host}/{self.repository}"

    @property
    def object(self) -> str:
        """What is asked of the registry: the digest if any, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.host, self.repository, self.tag, digest)

    @property
    def api_host(self) -> str:
        """The host actually dialled (Docker Hub's API lives elsewhere)."""
        return "registry-1.docker.io" if self.host == DOCKER_HUB else self.host


def parse(ref: str, *, normalize: bool = True) -> Reference:
    """Parse ``ref``; with ``normalize`` a bare ``busybox`` means ``docker.io/library/busybox:latest``."""
    if not ref or ref != ref.strip():
        raise InvalidArgument(f"invalid reference {ref!r}: invalid argument")
    rest, digest = ref, ""
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        from .digest import validate
        try:
            validate(digest)
        except InvalidArgument:
            raise InvalidArgument(f"invalid reference {ref!r}: bad digest: invalid argument") from None
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid reference {ref!r}: bad tag: invalid argument")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        host, path = first, remainder
    elif normalize:
        host, path = DOCKER_HUB, rest
    else:
        raise InvalidArgument(f"invalid reference {ref!r}: object required: invalid argument")
    if host == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if not _PATH.match(path):
        raise InvalidArgument(f"invalid reference {ref!r}: bad repository name: invalid argument")
    if not tag and not digest:
        tag = "latest"
    return Reference(host, path, tag, digest)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "127.0.0.1", "[::1]", "::1") or name.startswith("127.")
