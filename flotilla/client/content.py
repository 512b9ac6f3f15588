"""The content store: info, list, labels, delete, read, and the resumable Write stream."""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.protobuf import field_mask_pb2

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pb
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pb_grpc
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, Unavailable

from ._conn import Conn, rpc, translate
from .types import ts

from grpc import aio

READ_CHUNK = 1 << 20
CLOSE_WAIT = 10.0  # seconds a closed Write stream may take to end on the server


@dataclass
class ContentInfo:
    digest: str
    size: int
    created_at: _dt.datetime | None = None
    updated_at: _dt.datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def from_pb(p: pb.Info) -> "ContentInfo":
        return ContentInfo(p.digest, p.size, ts(p.created_at), ts(p.updated_at), dict(p.labels))


@dataclass
class WriteStatus:
    ref: str
    offset: int
    total: int
    expected: str = ""


class Writer:
    """One ingest over the Write stream. ``offset`` is where the store has us (resume point)."""

    def __init__(self, call: aio.StreamStreamCall, ref: str, offset: int, total: int) -> None:
        self._call = call
        self.ref = ref
        self.offset = offset
        self.total = total

    async def _send(self, req: pb.WriteContentRequest) -> pb.WriteContentResponse:
        try:
            await self._call.write(req)
            return await self._call.read()
        except aio.AioRpcError as exc:
            raise translate(exc) from None

    async def write(self, data: bytes) -> None:
        resp = await self._send(pb.WriteContentRequest(action=pb.WRITE, offset=self.offset, data=data))
        if resp.offset != self.offset + len(data):
            raise FailedPrecondition(f"ref {self.ref}: short write: at {resp.offset}, "
                                     f"expected {self.offset + len(data)}: failed precondition")
        self.offset = resp.offset

    async def commit(self, size: int, expected: str, labels: dict[str, str] | None = None) -> str:
        resp = await self._send(pb.WriteContentRequest(action=pb.COMMIT, total=size, offset=self.offset,
                                                       expected=expected, labels=labels or {}))
        await self.close()
        if expected and resp.digest and resp.digest != expected:
            raise FailedPrecondition(f"unexpected digest {resp.digest} != {expected}: failed precondition")
        return resp.digest or expected

    async def close(self) -> None:
        """Half-close the stream and let the server end it (it releases the ref then), as
        containerd's CloseSend does; cancel only if it does not end in a while."""
        async def drain() -> None:  # the status comes after any message still unread
            while await self._call.read() is not aio.EOF:
                pass

        try:
            await self._call.done_writing()
            await asyncio.wait_for(drain(), CLOSE_WAIT)
        except (aio.AioRpcError, asyncio.InvalidStateError, RuntimeError, asyncio.TimeoutError):
            pass
        self._call.cancel()


class Content:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = pb_grpc.ContentStub(conn.channel)

    @rpc
    async def info(self, digest: str) -> ContentInfo:
        resp = await self._stub.Info(pb.InfoRequest(digest=digest), metadata=self._conn.metadata())
        return ContentInfo.from_pb(resp.info)

    async def exists(self, digest: str) -> bool:
        from flotilla.libs.errors import NotFound
        try:
            await self.info(digest)
            return True
        except NotFound:
            return False

    @rpc
    async def list(self, *filters: str) -> list[ContentInfo]:
        out: list[ContentInfo] = []
        async for resp in self._stub.List(pb.ListContentRequest(filters=list(filters)), metadata=self._conn.metadata()):
            out += [ContentInfo.from_pb(i) for i in resp.info]
        return out

    @rpc
    async def set_labels(self, digest: str, labels: dict[str, str]) -> ContentInfo:
        """Set the given labels (an empty value removes one); others are kept."""
        resp = await self._stub.Update(pb.UpdateRequest(
            info=pb.Info(digest=digest, labels={k: v for k, v in labels.items() if v}),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])),
            metadata=self._conn.metadata())
        return ContentInfo.from_pb(resp.info)

    @rpc
    async def delete(self, digest: str) -> None:
        await self._stub.Delete(pb.DeleteContentRequest(digest=digest), metadata=self._conn.metadata())

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` (``size`` 0: to the end), in the server's chunks."""
        call = self._stub.Read(pb.ReadContentRequest(digest=digest, offset=offset, size=size),
                               metadata=self._conn.metadata())
        try:
            async for resp in call:
                yield resp.data
        except aio.AioRpcError as exc:
            raise translate(exc) from None

    async def read_all(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(digest)])

    @rpc
    async def statuses(self, *filters: str) -> list[WriteStatus]:
        resp = await self._stub.ListStatuses(pb.ListStatusesRequest(filters=list(filters)),
                                             metadata=self._conn.metadata())
        return [WriteStatus(s.ref, s.offset, s.total, s.expected) for s in resp.statuses]

    @rpc
    async def abort(self, ref: str) -> None:
        await self._stub.Abort(pb.AbortRequest(ref=ref), metadata=self._conn.metadata())

    async def writer(self, ref: str, size: int = 0, expected: str = "", *, retries: int = 50) -> Writer:
        """Open (or resume) the ingest ``ref``. AlreadyExists if ``expected`` is in the store;
        a ref locked by another writer is retried for a while, as containerd's OpenWriter does."""
        delay = 0.05
        for attempt in range(retries):
            call = self._stub.Write(metadata=self._conn.metadata())
            try:
                await call.write(pb.WriteContentRequest(action=pb.STAT, ref=ref, total=size, expected=expected))
                resp = await call.read()
                return Writer(call, ref, resp.offset, resp.total)
            except aio.AioRpcError as exc:
                call.cancel()
                err = translate(exc)
                if isinstance(err, Unavailable) and attempt + 1 < retries:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                raise err from None
        raise Unavailable(f"ref {ref} locked: unavailable")

    async def write_blob(self, ref: str, data: bytes, expected: str,
                         labels: dict[str, str] | None = None) -> bool:
        """Write a whole blob; False if it was already there."""
        try:
            w = await self.writer(ref, len(data), expected)
        except AlreadyExists:
            if labels:
                await self.set_labels(expected, labels)
            return False
        try:
            if w.offset > len(data):
                w.offset = 0
            pos = w.offset
            while pos < len(data):
                await w.write(data[pos:pos + READ_CHUNK])
                pos = w.offset
            await w.commit(len(data), expected, labels)
        except AlreadyExists:
            await w.close()
            if labels:
                await self.set_labels(expected, labels)
            return False
        except BaseException:
            await w.close()
            raise
        return True
