"""What every servicer needs: namespace from metadata, deadlines, error mapping, metrics."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from flotilla.libs import metrics
from flotilla.libs.errors import FailedPrecondition, FlotillaError, InvalidArgument
from flotilla.libs.identifiers import validate_identifier

from . import h2grpc

log = logging.getLogger("flotilla.gateway")
NAMESPACE_KEY = "containerd-namespace"
_INTERNAL, _CANCELLED = 13, 1
STATUS: dict[int, grpc.StatusCode] = {sc.value[0]: sc for sc in grpc.StatusCode}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def preencoded(context: aio.ServicerContext, data: bytes, message: Any) -> Any:
    """An answer the backend encoded already (libs/api/listed.py): our server sends the bytes
    as they are; grpcio's (FLOTILLA_GRPC_SERVER=grpcio, a bench's comparison) gets them parsed."""
    return data if isinstance(context, h2grpc.ServicerContext) else message.FromString(data)


def namespace(context: aio.ServicerContext) -> str:
    """The request's namespace, as containerd's NamespaceRequired reads it."""
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_KEY and value:
            try:
                validate_identifier(value)
            except InvalidArgument as exc:
                raise InvalidArgument(f"namespace validation: {exc.message}") from None
            return value
    raise FailedPrecondition("namespace is required: failed precondition")


def caller_namespace(context: aio.ServicerContext) -> str:
    """The request's namespace if it names a valid one, else ""."""
    try:
        return namespace(context)
    except (FailedPrecondition, InvalidArgument):
        return ""


def timeout(context: aio.ServicerContext, default: float) -> float:
    """The time left for this call: the client's deadline, capped by our default."""
    remaining = context.time_remaining()
    return default if remaining is None else max(0.001, min(default, remaining))


def unary(method: str) -> Callable[[F], F]:
    """Wrap a servicer method: FlotillaError becomes its gRPC status; metrics recorded."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def call(self: Any, request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = 0
            try:
                return await fn(self, request, context)
            except FlotillaError as exc:
                code = exc.code
                await context.abort(STATUS[exc.code], exc.message)
            except asyncio.CancelledError:
                code = _CANCELLED
                raise
            except aio.AbortError:
                raise
            except Exception as exc:  # a bug: say so as Internal, never a bare Unknown
                code = _INTERNAL
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"{method}: {exc}")
            finally:
                metrics.observe(method, code, time.perf_counter() - started)
        return call  # type: ignore[return-value]
    return wrap


def streaming(method: str) -> Callable[[F], F]:
    """Like ``unary`` for server- or bidi-streaming methods written as async generators."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def call(self: Any, request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = 0
            try:
                async for item in fn(self, request, context):  # type: ignore[attr-defined]
                    yield item
            except FlotillaError as exc:
                code = exc.code
                await context.abort(STATUS[exc.code], exc.message)
            except asyncio.CancelledError:
                code = _CANCELLED
                raise
            except aio.AbortError:
                raise
            except Exception as exc:
                code = _INTERNAL
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"{method}: {exc}")
            finally:
                metrics.observe(method, code, time.perf_counter() - started)
        return call  # type: ignore[return-value]
    return wrap
