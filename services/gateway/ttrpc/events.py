"""containerd.services.events.ttrpc.v1.Events on the ttrpc endpoint: Forward, which is what
containerd's shims and ttrpcutil clients call (docs/ttrpc.md)."""

from __future__ import annotations

from .. import pb
from ..events import EventsServicer
from .server import Server, unary_method

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"


def register_events(server: Server, servicer: EventsServicer) -> None:
    # The ttrpc ForwardRequest and Envelope (api/services/ttrpc/events/v1/events.proto) are the
    # gRPC ones field for field, same numbers and types, so the gRPC message decodes them and
    # the gRPC servicer's Forward validates and publishes them: one code path for both
    # endpoints, errors and metrics included.
    server.register(EVENTS_SERVICE, {"Forward": unary_method(servicer.Forward, pb.events.ForwardRequest)})
