"""A gRPC server that does nothing but answer: the floor of any Python gateway.

``python -m bench.nullgrpc SOCKET BLOB`` serves, on a UNIX socket, containerd's
``Content.Info``/``Content.Read`` straight from one file (any digest names it),
``Content.Write`` by counting the bytes it is sent, and
``Snapshots.Prepare/Commit/Remove/List`` as empty answers, with the gateway's own server
(``services/gateway/h2grpc`` on uvloop, or grpc.aio's with ``FLOTILLA_GRPC_SERVER=grpcio``).
No bus, no store, no checks: what a ctr command costs against it is what the gateway's
gRPC alone costs per call, which the gateway cannot go below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from grpc import aio

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbc_grpc
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2 as spb
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc as spb_grpc
from flotilla.libs.process import run_loop
from flotilla.services.gateway.front import new_grpc_server
from google.protobuf import empty_pb2

if TYPE_CHECKING:
    from .harness import Target

R = TypeVar("R")


class NullContent(pbc_grpc.ContentServicer):
    def __init__(self, blob: str) -> None:
        self.blob = blob
        self.size = os.path.getsize(blob)

    async def Info(self, request: pbc.InfoRequest, context: aio.ServicerContext) -> pbc.InfoResponse:
        return pbc.InfoResponse(info=pbc.Info(digest=request.digest, size=self.size))

    async def Read(self, request: pbc.ReadContentRequest,
                   context: aio.ServicerContext) -> AsyncIterator[pbc.ReadContentResponse]:
        end = self.size if request.size <= 0 else min(self.size, request.offset + request.size)
        with open(self.blob, "rb") as f:
            f.seek(request.offset)
            pos = request.offset
            while pos < end:
                data = f.read(min(1 << 20, end - pos))
                yield pbc.ReadContentResponse(offset=pos, data=data)
                pos += len(data)

    async def Write(self, request_iterator: AsyncIterator[pbc.WriteContentRequest],
                    context: aio.ServicerContext) -> AsyncIterator[pbc.WriteContentResponse]:
        """Counts the bytes and answers every message; keeps nothing."""
        offset = 0
        async for req in request_iterator:
            offset += len(req.data)
            yield pbc.WriteContentResponse(action=req.action, offset=offset, digest=req.expected)
            if req.action == pbc.COMMIT:
                return


class NullSnapshots(spb_grpc.SnapshotsServicer):
    async def Prepare(self, request: spb.PrepareSnapshotRequest,
                      context: aio.ServicerContext) -> spb.PrepareSnapshotResponse:
        return spb.PrepareSnapshotResponse()

    async def Commit(self, request: spb.CommitSnapshotRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        return empty_pb2.Empty()

    async def Remove(self, request: spb.RemoveSnapshotRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        return empty_pb2.Empty()

    async def List(self, request: spb.ListSnapshotsRequest,
                   context: aio.ServicerContext) -> AsyncIterator[spb.ListSnapshotsResponse]:
        return
        yield


async def serve(socket_path: str, blob: str) -> None:
    server = new_grpc_server()
    pbc_grpc.add_ContentServicer_to_server(NullContent(blob), server)
    spb_grpc.add_SnapshotsServicer_to_server(NullSnapshots(), server)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server.add_insecure_port(f"unix://{socket_path}")
    await server.start()
    await server.wait_for_termination()


def against(t: "Target", blob: Path, workload: "Callable[[Target], R]") -> R:
    """``workload`` run against a null server (serving ``blob``) instead of ``t``'s daemon."""
    with _running(t.base, blob) as address:
        return workload(dataclasses.replace(t, address=address))


@contextlib.contextmanager
def _running(base: Path, blob: Path) -> Iterator[str]:
    """A null server in its own process for the block; yields its socket path."""
    socket_path = base / "null-grpc.sock"
    proc = subprocess.Popen([sys.executable, "-m", "bench.nullgrpc", str(socket_path), str(blob)],
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.is_socket():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the null gRPC server did not start")
            time.sleep(0.05)
        yield str(socket_path)
    finally:
        proc.kill()
        proc.wait()
        socket_path.unlink(missing_ok=True)


if __name__ == "__main__":
    run_loop(serve(sys.argv[1], sys.argv[2]))
