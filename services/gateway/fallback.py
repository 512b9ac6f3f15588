"""Every containerd method that has no Flotilla servicer yet answers Unimplemented, clearly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from flotilla.libs.errors import InvalidArgument

from .rpc import NAMESPACE_KEY, namespace


def caller_namespace_or_raise(context: aio.ServicerContext) -> None:
    """Raise InvalidArgument when the request names a namespace that is not valid."""
    if any(k == NAMESPACE_KEY and v for k, v in context.invocation_metadata() or ()):
        namespace(context)


class UnimplementedHandler(grpc.GenericRpcHandler):
    """Registered last: catches any method no servicer claimed."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        async def answer(_requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                caller_namespace_or_raise(context)
            except InvalidArgument as exc:  # a bad namespace is the first thing containerd reports
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"{method.lstrip('/')}: not implemented by flotilla yet")
            yield  # pragma: no cover  (makes this an async generator)

        return grpc.stream_stream_rpc_method_handler(answer)
