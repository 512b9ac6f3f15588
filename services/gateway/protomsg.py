"""Filling protobuf messages from bus data (dicts of builtins) and back."""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def set_timestamp(ts: timestamp_pb2.Timestamp, ns: int) -> None:
    ts.seconds, ts.nanos = divmod(int(ns), 1_000_000_000)


def timestamp_fields(ns: int) -> dict[str, int]:
    """A Timestamp as protobuf's constructors take one (a map), from nanoseconds."""
    seconds, nanos = divmod(int(ns), 1_000_000_000)
    return {"seconds": seconds, "nanos": nanos}


def constructor_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record's wire map (an image's, a container's) as protobuf's constructor takes it:
    the same names, its timestamps as maps. Changed in place: the map is the caller's own,
    fresh from the bus."""
    record["created_at"] = timestamp_fields(record["created_at"])
    record["updated_at"] = timestamp_fields(record["updated_at"])
    return record


def timestamp_ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def fill(msg: Message, data: dict[str, Any]) -> Message:
    """Set ``msg``'s fields from ``data``: Timestamps from int nanoseconds, Any from
    ``{"type_url", "value"}``, nested messages from dicts, maps and repeated fields."""
    if isinstance(msg, timestamp_pb2.Timestamp):
        set_timestamp(msg, data)  # type: ignore[arg-type]
        return msg
    if isinstance(msg, any_pb2.Any):
        msg.type_url, msg.value = data.get("type_url", ""), data.get("value", b"")
        return msg
    fields = msg.DESCRIPTOR.fields_by_name
    for name, value in data.items():
        fd = fields.get(name)
        if fd is None or value is None:
            continue
        target = getattr(msg, name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_fd.type == _MESSAGE:
                    fill(target[k], v)
                else:
                    target[k] = v
        elif fd.is_repeated:
            for item in value:
                if fd.type == _MESSAGE:
                    fill(target.add(), item)
                else:
                    target.append(item)
        elif fd.type == _MESSAGE:
            fill(target, value)
        else:
            setattr(msg, name, value)
    return msg
