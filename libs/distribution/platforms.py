"""Platform strings (``os/arch[/variant]``), the host's platform, and selection from an index."""

from __future__ import annotations

import platform as _platform

from .errors import InvalidArgument, NotFound
from .media import Descriptor, Platform

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "armhf": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}


def host() -> Platform:
    machine = _platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    variant = "v8" if arch == "arm64" else ("v7" if arch == "arm" else "")
    return Platform("linux", arch, variant)


def parse(text: str) -> Platform:
    parts = [p.strip().lower() for p in text.split("/")]
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise InvalidArgument(f"{text!r}: unknown platform: invalid argument")
    if len(parts) == 1:  # "arm64" alone: linux
        return normalize(Platform("linux", parts[0]))
    return normalize(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else ""))


def normalize(p: Platform) -> Platform:
    arch = _ARCH.get(p.architecture, p.architecture)
    variant = p.variant
    if arch == "arm64" and variant in ("", "8"):
        variant = "v8"
    if arch == "arm" and variant in ("", "7"):
        variant = "v7"
    return Platform(p.os or "linux", arch, variant)


def matches(want: Platform, have: Platform | None) -> bool:
    if have is None:
        return False
    a, b = normalize(want), normalize(have)
    return a.os == b.os and a.architecture == b.architecture and a.variant == b.variant


def select(manifests: list[Descriptor], want: Platform) -> Descriptor:
    """The first manifest of an index for ``want``; NotFound if there is none."""
    for desc in manifests:
        if matches(want, desc.platform):
            return desc
    have = ", ".join(str(d.platform) for d in manifests if d.platform) or "none"
    raise NotFound(f"no match for platform {want} in manifest (has {have}): not found")
