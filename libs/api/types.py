"""Records more than one contract carries."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Mount:
    """A mount as containerd's snapshotters return it: the currency between the snapshots
    and runtime services (``flotilla.libs.mount`` mounts one)."""
    type: str
    source: str
    target: str = ""
    options: list[str] = field(default_factory=list)


@dataclass
class Descriptor:
    """An OCI content descriptor: a blob of the content store and what it holds."""
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
