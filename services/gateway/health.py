"""grpc.health.v1.Health, as containerd serves it: the server as a whole ("") is SERVING
while the gateway serves; no other service name is known. containerd's Go client calls
Check before anything else (``client.IsServing``). It is registered before the rest of the
gateway is built (``__main__``), so it imports only grpc and its own messages, and answers
without the servicers' wrapping (``rpc.unary``: metrics, the bus's errors), which it needs not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from flotilla._api.grpc.health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthServicer(health_pb2_grpc.HealthServicer):
    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")  # grpc-go's words
        return health_pb2.HealthCheckResponse(status=SERVING)

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: aio.ServicerContext) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        # grpc-go: an unknown service is watched as SERVICE_UNKNOWN
        yield health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN if request.service else SERVING)
        await asyncio.Event().wait()  # no change to report until the client leaves


def register(server: object) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)  # type: ignore[arg-type]
