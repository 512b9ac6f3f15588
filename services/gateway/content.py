"""containerd.services.content.v1.Content, backed by the content service.

On the content service's host (the blob and ingest files are the very files it names)
bytes go straight between the gRPC stream and the files, NATS carries only control;
elsewhere they go as chunks over NATS. Same rules and status codes either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2
from grpc import aio

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbc_grpc
from flotilla.libs.api import events as ev
from flotilla.libs.api.content import ContentChanged, ContentClient, Info, LocalFile, Status, Writer, digest_error
from flotilla.libs.api.snapshots import SnapshotsClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import AlreadyExists, FlotillaError, InvalidArgument, NotFound, OutOfRange

from .blobfiles import BlobFiles
from .events import EventHub
from .protomsg import set_timestamp
from .records import RecordCache
from .rpc import namespace, streaming, unary

log = logging.getLogger("flotilla.gateway.content")
LEASE_KEY = "containerd-lease"
READ_PIECE = 1 << 20        # bytes per Read response, as containerd sends them
LOCAL_READ = 8 << 20        # bytes per pread from the blob file
LAYER_REF = "layer-"        # containerd's ingest refs of layers (remotes.MakeRefKey)


def _lease(context: aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == LEASE_KEY:
            return value
    return ""


def _info_pb(info: Info, with_updated: bool = True) -> pbc.Info:
    out = pbc.Info(digest=info.digest, size=info.size, labels=info.labels)
    set_timestamp(out.created_at, info.created_at)
    if with_updated:
        set_timestamp(out.updated_at, info.updated_at)
    return out


def _status_pb(st: Status) -> pbc.Status:
    out = pbc.Status(ref=st.ref, offset=st.offset, total=st.total, expected=st.expected)
    set_timestamp(out.started_at, st.started_at)
    set_timestamp(out.updated_at, st.updated_at)
    return out


def _valid(digest: str) -> None:
    if digest_error(digest):
        raise InvalidArgument(f'"{digest}" failed validation')


class ContentServicer(pbc_grpc.ContentServicer):
    def __init__(self, bus: Bus, cfg: Config) -> None:
        self.bus, self.cfg = bus, cfg
        # FLOTILLA_CONTENT_LOCAL=0 sends bytes over NATS as from another host (tests, benchmarks)
        local = os.environ.get("FLOTILLA_CONTENT_LOCAL", "1") != "0"
        self.content = ContentClient(bus, cfg.prefix, timeout=cfg.request_timeout, local=local, host=cfg.host)
        self._files = BlobFiles(self._resolve)
        self._infos: RecordCache[Info] = RecordCache()
        # writes whose stream ended and whose ref is being released, by (namespace, ref): a
        # client that closes a writer and at once opens another on the same ref, or aborts
        # it, must not find it still locked (containerd releases it as the stream ends)
        self._releasing: dict[tuple[str, str], asyncio.Future[None]] = {}
        # layers written by a client's pull are applied ahead of its Diff.Apply
        # (services/snapshots/ahead.py; unless its apply_ahead_ttl is 0)
        self.snapshots = SnapshotsClient(bus, cfg.prefix, cfg.host)
        self._aheads: set[asyncio.Task[None]] = set()

    @classmethod
    async def register(cls, server: aio.Server, bus: Bus, cfg: Config, hub: EventHub) -> "ContentServicer":
        servicer = cls(bus, cfg)
        # a delete anywhere drops our open file and record of that blob at once, a label
        # change the record
        hub.watch(ev.ContentDelete.TOPIC, servicer._on_delete)
        await servicer.content.watch_changes(servicer._on_changed)
        pbc_grpc.add_ContentServicer_to_server(servicer, server)
        return servicer

    def _on_delete(self, event: dict[str, Any]) -> None:
        ns, digest = event.get("namespace", ""), (event.get("fields") or {}).get("digest", "")
        self._files.drop(ns, digest)
        self._infos.drop((ns, digest))

    def _on_changed(self, notice: ContentChanged) -> None:
        # a record as new as the change is this gateway's own update's answer: it stays
        self._infos.drop_unless((notice.namespace, notice.digest),
                                lambda kept: bool(notice.updated_at) and kept.updated_at >= notice.updated_at)

    async def _info(self, ns: str, digest: str) -> Info:
        return await self._infos.fetch((ns, digest), lambda: self.content.info(ns, digest))

    async def _resolve(self, ns: str, digest: str) -> LocalFile | None:
        return await self.content.local_file(ns, digest) if self.content.local else None

    @unary("Content.Info")
    async def Info(self, request: pbc.InfoRequest, context: aio.ServicerContext) -> pbc.InfoResponse:
        ns = namespace(context)
        _valid(request.digest)
        return pbc.InfoResponse(info=_info_pb(await self._info(ns, request.digest)))

    @unary("Content.Update")
    async def Update(self, request: pbc.UpdateRequest, context: aio.ServicerContext) -> pbc.UpdateResponse:
        ns = namespace(context)
        _valid(request.info.digest)
        info = Info(digest=request.info.digest, labels=dict(request.info.labels))
        updated = await self._infos.replace((ns, request.info.digest),
                                            self.content.update(ns, info, list(request.update_mask.paths)))
        return pbc.UpdateResponse(info=_info_pb(updated))

    @streaming("Content.List")
    async def List(self, request: pbc.ListContentRequest, context: aio.ServicerContext) -> AsyncIterator[pbc.ListContentResponse]:
        ns = namespace(context)
        infos = await self.content.list(ns, list(request.filters))
        for start in range(0, len(infos), 100):
            yield pbc.ListContentResponse(info=[_info_pb(i, False) for i in infos[start:start + 100]])

    @unary("Content.Delete")
    async def Delete(self, request: pbc.DeleteContentRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        ns = namespace(context)
        err = digest_error(request.digest)
        if err:
            raise InvalidArgument(err)
        self._files.drop(ns, request.digest)
        await self._infos.change((ns, request.digest), self.content.delete(ns, request.digest))
        return empty_pb2.Empty()

    @streaming("Content.Read")
    async def Read(self, request: pbc.ReadContentRequest, context: aio.ServicerContext) -> AsyncIterator[pbc.ReadContentResponse]:
        ns = namespace(context)
        digest = request.digest
        err = digest_error(digest)
        if err:
            raise InvalidArgument(f"{digest}: {err}")
        blob = await self._files.acquire(ns, digest)
        try:
            size = blob.size if blob is not None else (await self._info(ns, digest)).size
            offset = max(0, request.offset)
            if offset > size:
                raise OutOfRange(f"read past object length {size} bytes")
            want = request.size
            end = size if want <= 0 or offset + want > size else offset + want
            if blob is None:
                pos = offset
                async for piece in self.content.read(ns, digest, offset, end - offset):
                    for i in range(0, len(piece), READ_PIECE):
                        yield pbc.ReadContentResponse(offset=pos, data=piece[i:i + READ_PIECE])
                        pos += min(READ_PIECE, len(piece) - i)
                return
            pos = offset
            while pos < end:
                data = await blob.read(min(LOCAL_READ, end - pos), pos)
                if not data:
                    break
                if len(data) <= READ_PIECE:
                    yield pbc.ReadContentResponse(offset=pos, data=data)
                else:
                    view = memoryview(data)
                    for i in range(0, len(view), READ_PIECE):
                        yield pbc.ReadContentResponse(offset=pos + i, data=bytes(view[i:i + READ_PIECE]))
                pos += len(data)
        finally:
            if blob is not None:
                blob.release()

    @unary("Content.Status")
    async def Status(self, request: pbc.StatusRequest, context: aio.ServicerContext) -> pbc.StatusResponse:
        ns = namespace(context)
        try:
            st = await self.content.status(ns, request.ref)
        except FlotillaError as exc:
            raise type(exc)(f'could not get status for ref "{request.ref}": {exc.message}') from None
        return pbc.StatusResponse(status=_status_pb(st))

    @unary("Content.ListStatuses")
    async def ListStatuses(self, request: pbc.ListStatusesRequest, context: aio.ServicerContext) -> pbc.ListStatusesResponse:
        ns = namespace(context)
        statuses = await self.content.list_statuses(ns, list(request.filters))
        return pbc.ListStatusesResponse(statuses=[_status_pb(s) for s in statuses])

    @unary("Content.Abort")
    async def Abort(self, request: pbc.AbortRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        ns = namespace(context)
        await self._released(ns, request.ref)
        await self.content.abort(ns, request.ref)
        return empty_pb2.Empty()

    @streaming("Content.Write")
    async def Write(self, request_iterator: AsyncIterator[pbc.WriteContentRequest],
                    context: aio.ServicerContext) -> AsyncIterator[pbc.WriteContentResponse]:
        """containerd's Write rules: stat / write / commit, offsets checked, resumable by ref."""
        ns = namespace(context)
        requests = request_iterator.__aiter__()
        try:
            req = await requests.__anext__()
        except StopAsyncIteration:
            return
        if not req.ref:
            raise InvalidArgument("first message must have a reference")
        ref, total, expected = req.ref, req.total, req.expected
        await self._released(ns, ref)
        w: Writer = await self.content.writer(ns, ref, total, expected, _lease(context))
        try:
            while True:
                msg = pbc.WriteContentResponse(action=req.action, offset=w.offset)
                # containerd looks the expected blob up on every message; the writer's open
                # did for its own expected, and the commit does for the commit's
                if req.expected and req.expected != expected and req.action != pbc.COMMIT:
                    expected = req.expected
                    if await self._exists(ns, req.expected):
                        await w.close()
                        try:
                            await self.content.abort(ns, ref)
                        except FlotillaError:
                            pass
                        raise AlreadyExists(f"blob with expected digest {req.expected} exists")
                if req.expected:
                    expected = req.expected
                if req.total > 0:
                    total = req.total
                if req.action == pbc.STAT:
                    st = await w.status()
                    msg.digest, msg.total = st.digest, total
                    set_timestamp(msg.started_at, st.started_at)
                    set_timestamp(msg.updated_at, st.updated_at)
                elif req.action in (pbc.WRITE, pbc.COMMIT):
                    if req.offset > 0 and req.offset != w.offset:
                        raise OutOfRange(f"write @{req.offset} must occur at current offset {w.offset}")
                    if req.offset == 0 and w.offset > 0:
                        await w.truncate()
                        msg.offset = 0
                    data = req.data  # each access copies the bytes out of the message
                    if data:
                        msg.offset = await w.write(data)
                    if req.action == pbc.COMMIT:
                        mark = self._infos.mark()
                        info = await w.commit(total, expected, dict(req.labels))
                        if self._infos.put((ns, info.digest), info, mark):  # no delete came meanwhile
                            fd = w.committed_file()
                            if fd >= 0:
                                self._files.keep(ns, info.digest, fd, info.size)
                        msg.digest = info.digest
                        msg.offset = info.size
                        if ref.startswith(LAYER_REF):
                            self._apply_ahead(ns, info.digest)
                yield msg
                if req.action == pbc.COMMIT:
                    return
                try:
                    req = await requests.__anext__()
                except StopAsyncIteration:
                    return
        finally:
            await self._release(ns, ref, w)

    def _apply_ahead(self, ns: str, digest: str) -> None:
        """containerd's client applies a pull's layers one after the other once each is
        fetched: have this one applied now, in the background."""
        task = asyncio.ensure_future(self.snapshots.apply_ahead(ns, digest))
        self._aheads.add(task)
        task.add_done_callback(self._ahead_asked)

    def _ahead_asked(self, task: "asyncio.Task[None]") -> None:
        self._aheads.discard(task)
        if not task.cancelled() and task.exception() is not None:  # its Diff.Apply applies it
            log.debug("layer not applied ahead: %s", task.exception())

    async def _release(self, ns: str, ref: str, w: Writer) -> None:
        key = (ns, ref)
        done = self._releasing[key] = asyncio.get_running_loop().create_future()
        try:
            await w.close()
        finally:
            done.set_result(None)
            if self._releasing.get(key) is done:
                del self._releasing[key]

    async def _released(self, ns: str, ref: str) -> None:
        """Wait for this gateway's release of ``ref`` in progress, if any."""
        pending = self._releasing.get((ns, ref))
        if pending is not None:
            await asyncio.shield(pending)

    async def _exists(self, ns: str, digest: str) -> bool:
        try:
            await self._info(ns, digest)
            return True
        except (NotFound, InvalidArgument):
            return False
