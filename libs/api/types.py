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
