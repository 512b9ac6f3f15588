"""containerd.services.version.v1.Version."""

from __future__ import annotations

from google.protobuf import empty_pb2
from grpc import aio

import flotilla

from . import pb
from .rpc import unary


class VersionServicer(pb.version_grpc.VersionServicer):
    def __init__(self, revision: str) -> None:
        self.response = pb.version.VersionResponse(version=flotilla.__version__, revision=revision)

    @unary("Version.Version")
    async def Version(self, request: empty_pb2.Empty, context: aio.ServicerContext) -> pb.version.VersionResponse:
        return self.response
