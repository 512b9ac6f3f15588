"""Events as they cross the bus.

A service publishes an event as data (``fields``) naming containerd's payload type;
the gateway encodes it into that protobuf type. Events a client publishes keep their
encoded payload (``value``) untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .api.events import EventRecord
from .subjects import events as events_subject
from .wire import to_wire

if TYPE_CHECKING:  # the bus (nats) is not imported for a contract's records and subjects
    from .bus import Bus


@dataclass(frozen=True)
class Event:
    topic: str                      # e.g. "/namespaces/create"
    namespace: str
    type_url: str                   # e.g. "containerd.events.NamespaceCreate"
    timestamp_ns: int = 0
    value: bytes = b""              # encoded payload (events published by clients)
    fields: dict[str, Any] = field(default_factory=dict)  # payload as data (events of services)
    # the host whose host-local record (task, snapshot, container) it is about; "" for what
    # the whole farm shares. A gateway passes on only its own host's and the farm's events
    host: str = ""


async def publish(bus: Bus, prefix: str, namespace: str, event: EventRecord, *, host: str = "") -> None:
    """``event`` onto the bus; ``host`` when it is about a host-local record (see Event.host)."""
    await bus.publish(events_subject(prefix), Event(
        topic=event.TOPIC, namespace=namespace, type_url=event.TYPE_URL,
        timestamp_ns=time.time_ns(), fields=to_wire(event), host=host))
