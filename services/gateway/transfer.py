"""Flotilla's own gRPC methods for server-side pulls and pushes (containerd 1.6 has no Transfer
API): ``/flotilla.transfer.v1.Transfer/Pull`` and ``.../Push``, server-streaming, messages are
msgpack maps.

Request: the fields of ``PullRequest`` (``PushRequest``) except ``namespace`` (from the
containerd-namespace header) and ``progress``. Stream: ``{"progress": PullProgress}`` records,
then one ``{"result": PullResult | PushResult}``. Errors are gRPC statuses with containerd's codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
from grpc import aio

from flotilla.libs.api.transfer import PULL_TIMEOUT, PullProgress, PullRequest, PushRequest, TransferClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import InvalidArgument
from flotilla.libs.wire import from_wire, pack, to_wire, unpack

from .rpc import namespace, streaming, timeout

SERVICE = "flotilla.transfer.v1.Transfer"
FIELDS = {f for f in PullRequest.__dataclass_fields__ if f not in ("namespace", "progress")}
PUSH_FIELDS = {f for f in PushRequest.__dataclass_fields__ if f not in ("namespace", "progress")}


class TransferServicer:
    def __init__(self, client: TransferClient) -> None:
        self.client = client

    @classmethod
    def register(cls, server: aio.Server, bus: Bus, cfg: Config) -> None:
        servicer = cls(TransferClient(bus, cfg.prefix, cfg.host))
        handlers = {name: grpc.unary_stream_rpc_method_handler(fn, request_deserializer=unpack,
                                                               response_serializer=pack)
                    for name, fn in (("Pull", servicer.Pull), ("Push", servicer.Push))}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])

    @streaming("Transfer.Pull")
    async def Pull(self, request: Any, context: aio.ServicerContext) -> AsyncIterator[dict[str, Any]]:
        if not isinstance(request, dict) or not request.get("ref") or set(request) - FIELDS:
            raise InvalidArgument(f"transfer pull: a map with ref and only {sorted(FIELDS)}: invalid argument")
        req = from_wire(PullRequest, {**request, "namespace": namespace(context)})
        queue: asyncio.Queue[PullProgress] = asyncio.Queue()
        async for item in _stream(self.client.pull(req, queue.put_nowait, timeout(context, PULL_TIMEOUT)), queue):
            yield item

    @streaming("Transfer.Push")
    async def Push(self, request: Any, context: aio.ServicerContext) -> AsyncIterator[dict[str, Any]]:
        if not isinstance(request, dict) or not request.get("name") or set(request) - PUSH_FIELDS:
            raise InvalidArgument(f"transfer push: a map with name and only {sorted(PUSH_FIELDS)}: invalid argument")
        req = from_wire(PushRequest, {**request, "namespace": namespace(context)})
        queue: asyncio.Queue[PullProgress] = asyncio.Queue()
        async for item in _stream(self.client.push(req, queue.put_nowait, timeout(context, PULL_TIMEOUT)), queue):
            yield item


async def _stream(work: Awaitable[Any], queue: "asyncio.Queue[PullProgress]") -> AsyncIterator[dict[str, Any]]:
    """Progress records while ``work`` runs, then its result."""
    call = asyncio.ensure_future(work)
    try:
        while not call.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, call], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield {"progress": to_wire(getter.result())}
            else:
                getter.cancel()
        yield {"result": to_wire(call.result())}
    finally:
        if not call.done():
            call.cancel()
