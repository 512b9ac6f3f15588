"""Every containerd method that has no Flotilla servicer yet answers Unimplemented, clearly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio


class UnimplementedHandler(grpc.GenericRpcHandler):
    """Registered last: catches any method no servicer claimed."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        async def answer(_requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"{method.lstrip('/')}: not implemented by flotilla yet")
            yield  # pragma: no cover  (makes this an async generator)

        return grpc.stream_stream_rpc_method_handler(answer)
