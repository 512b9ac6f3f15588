"""The shared gRPC connection: channel, namespace and lease headers, error translation."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

from flotilla.libs.errors import BY_CODE, FlotillaError, Unknown

NAMESPACE_KEY = "containerd-namespace"
LEASE_KEY = "containerd-lease"
MAX_MESSAGE = 16 << 20

# the lease every call made in this task carries (set by Leases.scope)
current_lease: contextvars.ContextVar[str] = contextvars.ContextVar("flotilla_lease", default="")

T = TypeVar("T")


def translate(exc: grpc.RpcError) -> FlotillaError:
    """A gRPC error as the shared vocabulary's class for its status code (same message)."""
    code = exc.code() if hasattr(exc, "code") else None
    value = code.value[0] if code is not None else 2
    cls = BY_CODE.get(value, Unknown)
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return cls(details or cls.suffix)


def rpc(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Decorate an async method so gRPC errors surface as FlotillaError subclasses."""
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except aio.AioRpcError as exc:
            raise translate(exc) from None
    return call


@dataclass
class Conn:
    channel: aio.Channel
    namespace: str

    def metadata(self, namespace: str | None = None) -> tuple[tuple[str, str], ...]:
        md = [(NAMESPACE_KEY, namespace if namespace is not None else self.namespace)]
        lease = current_lease.get()
        if lease:
            md.append((LEASE_KEY, lease))
        return tuple(md)

    @staticmethod
    def open(address: str, namespace: str) -> "Conn":
        target = address if "://" in address else f"unix://{address}"
        channel = aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ])
        return Conn(channel, namespace)
