"""Records the client returns: plain dataclasses converted from containerd's protobufs."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2

from flotilla._api.containerd.api.types import descriptor_pb2, mount_pb2
from flotilla.libs.distribution import Descriptor


def ts(value: timestamp_pb2.Timestamp) -> _dt.datetime | None:
    if value.seconds <= 0 and not value.nanos:  # unset, or Go's zero time
        return None
    return value.ToDatetime(tzinfo=_dt.timezone.utc)


def desc_to_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size,
                                     annotations=dict(d.annotations))


def desc_from_pb(p: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(p.media_type, p.digest, p.size, dict(p.annotations))


@dataclass
class Mount:
    type: str
    source: str
    target: str = ""
    options: list[str] = field(default_factory=list)

    def to_pb(self) -> mount_pb2.Mount:
        return mount_pb2.Mount(type=self.type, source=self.source, target=self.target, options=list(self.options))

    @staticmethod
    def from_pb(p: mount_pb2.Mount) -> "Mount":
        return Mount(p.type, p.source, p.target, list(p.options))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, "target": self.target, "options": self.options}


def jsonable(value: Any) -> Any:
    """A record as JSON-ready data (for ``--json`` listings)."""
    import dataclasses
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value
