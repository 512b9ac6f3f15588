"""The server's version."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import empty_pb2

from flotilla._api.containerd.api.services.version.v1 import version_pb2_grpc

from ._conn import Conn, rpc


@dataclass
class Version:
    version: str
    revision: str


class VersionService:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = version_pb2_grpc.VersionStub(conn.channel)

    @rpc
    async def get(self) -> Version:
        resp = await self._stub.Version(empty_pb2.Empty(), metadata=self._conn.metadata())
        return Version(resp.version, resp.revision)
