"""A contract's methods as data: each ``Route`` names its method, the record its request
decodes into, the record its reply decodes into, whether it is idempotent and its default
deadline. The service serves a table of routes (``Bus.serve_routes``) and its client calls
them (``Bus.call``), so decoding, request ids, retries and deadlines live in one place
(libs/bus.py) and no handler unpacks its own request.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .wire import from_wire

Req = TypeVar("Req")
Rep = TypeVar("Rep")


@dataclass(frozen=True)
class Route(Generic[Req, Rep]):
    method: str                         # the subject's last tokens, e.g. "namespaces.get"
    request: Any = None                 # the request's record type; None: sent as plain data
    reply: Any = None                   # a record type, list[record type], or None: plain data
    idempotent: bool = False            # safe to send again as it is (else: with a request id)
    timeout: float = 10.0               # the caller's deadline unless it gives one

    def decode_request(self, payload: Any) -> Req:
        """The request record; a nil or malformed body is a WireError (InvalidArgument)."""
        return payload if self.request is None else _decode(self.request, payload)

    def decode_reply(self, payload: Any) -> Rep:
        return None if payload is None else _decode(self.reply, payload)


def method_name(method: "Route[Any, Any] | str") -> str:
    """A route's method, or a plain method name outside the table (e.g. "ping")."""
    return method.method if isinstance(method, Route) else method


def _decode(tp: Any, payload: Any) -> Any:
    if tp is None:
        return payload
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(payload, list):
            return from_wire(list, payload)  # type: ignore[arg-type]  # raises WireError
        return [from_wire(item, p) for p in payload]
    return from_wire(tp, payload)
