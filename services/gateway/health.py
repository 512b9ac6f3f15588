"""grpc.health.v1.Health, as containerd serves it: the server as a whole ("") is SERVING
while the gateway serves; no other service name is known. containerd's Go client calls
Check before anything else (``client.IsServing``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from grpc import aio

from flotilla._api.grpc.health.v1 import health_pb2, health_pb2_grpc
from flotilla.libs.errors import NotFound

from .rpc import streaming, unary

SERVING = health_pb2.HealthCheckResponse.SERVING


def _known(service: str) -> health_pb2.HealthCheckResponse:
    if service:
        raise NotFound("unknown service")  # grpc-go's health server says just that
    return health_pb2.HealthCheckResponse(status=SERVING)


class HealthServicer(health_pb2_grpc.HealthServicer):
    @unary("Health.Check")
    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        return _known(request.service)

    @streaming("Health.Watch")
    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: aio.ServicerContext) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        if request.service:  # grpc-go: an unknown service is watched as SERVICE_UNKNOWN
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        else:
            yield _known("")
        await asyncio.Event().wait()  # no change to report until the client leaves


def register(server: object) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)  # type: ignore[arg-type]
