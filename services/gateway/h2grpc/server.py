"""gRPC calls over H2Connection on an asyncio UNIX socket server, with grpc.aio.Server's
registration interface (the generated ``add_*Servicer_to_server`` functions work as they are).

One event loop thread does the framing and runs the handlers: a unary call costs a few
callbacks, where grpc.aio's server passes each call between its C core's threads and the
loop (about 0.7 ms of CPU per call against 0.16 here: docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import AsyncIterator, Iterable
from typing import Any, NamedTuple

import grpc
from grpc import aio

from ..opening import Opening, OpeningFailed
from .connection import (NO_ERROR, RESPONSE_HEADERS, DataReceived, H2Connection, ProtocolError, RequestReceived,
                         StreamReset, WindowOpened, trailer_block)
from .context import ServicerContext

log = logging.getLogger("flotilla.gateway.h2grpc")
_OK, _UNKNOWN, _DEADLINE, _UNIMPLEMENTED, _INTERNAL, _EXHAUSTED, _UNAVAILABLE = 0, 2, 4, 12, 13, 8, 14


class _CallDetails(NamedTuple):  # what a grpc.GenericRpcHandler is asked about
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


def _encode_message(text: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2)."""
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text.encode())


class _Stream:
    __slots__ = ("id", "method", "handler", "context", "task", "body", "messages", "client_ended", "headers_sent",
                 "window", "timer", "expired", "finished")

    def __init__(self, stream_id: int, method: str, handler: grpc.RpcMethodHandler,
                 context: ServicerContext) -> None:
        self.id, self.method, self.handler, self.context = stream_id, method, handler, context
        self.task: asyncio.Task[None] | None = None
        self.body = bytearray()  # received bytes not yet cut into messages
        self.messages: asyncio.Queue[tuple[bytes, int] | None] | None = None  # request-streaming calls only
        self.client_ended = self.headers_sent = self.expired = self.finished = False
        self.window = asyncio.Event()
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.h2 = H2Connection()
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.writable = asyncio.Event()
        self.writable.set()

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        if self.server.stopping:  # handed over after stop() began: its client goes elsewhere
            self.h2.go_away()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.writable.set()
        for st in self.streams.values():
            if st.timer is not None:
                st.timer.cancel()
            if st.task is not None:
                st.task.cancel()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive(data)
        except ProtocolError as exc:
            log.warning("closing a connection: %s", exc)
            self.h2.go_away(exc.code)
            self.flush()
            assert self.transport is not None
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, DataReceived):
                self._data(ev)
            elif isinstance(ev, RequestReceived):
                self._request(ev)
            elif isinstance(ev, WindowOpened):
                if ev.stream_id == 0:
                    for st in self.streams.values():
                        st.window.set()
                elif ev.stream_id in self.streams:
                    self.streams[ev.stream_id].window.set()
            elif isinstance(ev, StreamReset):
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:  # nothing more may be sent on it
                    st.finished = True
                    if st.timer is not None:
                        st.timer.cancel()
                    if st.task is not None:
                        st.task.cancel()
        self.flush()

    def flush(self) -> None:
        out = self.h2.data_to_send()
        if out and not self.closed:
            assert self.transport is not None
            self.transport.write(out)

    # -- requests --------------------------------------------------------------------------

    def _request(self, ev: RequestReceived) -> None:
        if self.h2.refused(ev.stream_id):
            return
        path = next((v for k, v in ev.headers if k == ":path"), "")
        context = ServicerContext(ev.headers)
        handler = self.server.handler(path, context)
        st = _Stream(ev.stream_id, path, handler or _HELD, context)
        self.streams[st.id] = st
        if context.deadline is not None:
            st.timer = asyncio.get_running_loop().call_at(context.deadline, self._expire, st)
        if handler is None:  # the server is still opening: its messages are kept meanwhile
            st.messages = asyncio.Queue()
            st.task = asyncio.create_task(self._serve_held(st))
        elif handler.request_streaming:
            st.messages = asyncio.Queue()
            st.task = asyncio.create_task(self._serve(st, self._requests(st)))
        if ev.ended:
            self._ended(st)

    def _data(self, ev: DataReceived) -> None:
        st = self.streams.get(ev.stream_id)
        if st is None:
            self.h2.consumed(ev.stream_id, ev.flow)
            return
        body = st.body
        body += ev.data
        if ev.flow > len(ev.data):  # padding: nothing will consume it
            self.h2.consumed(st.id, ev.flow - len(ev.data))
        if st.messages is not None:
            while len(body) >= 5:
                size = int.from_bytes(body[1:5], "big")
                if size > self.server.max_message:
                    return self._too_big(st, size)
                if len(body) < 5 + size:
                    break
                if body[0]:
                    self._fail(st, _UNIMPLEMENTED, "compressed messages are not supported")
                    return
                with memoryview(body) as view:  # one copy (a slice of body would copy twice)
                    message = bytes(view[5:5 + size])
                st.messages.put_nowait((message, 5 + size))
                del body[:5 + size]
        elif len(body) > self.server.max_message + 5:
            return self._too_big(st, len(body) - 5)
        if ev.ended:
            self._ended(st)

    def _too_big(self, st: _Stream, size: int) -> None:
        self._fail(st, _EXHAUSTED, f"received message larger than max ({size} vs. {self.server.max_message})")

    def _ended(self, st: _Stream) -> None:
        """The client sent all it will."""
        st.client_ended = True
        if st.messages is not None:
            st.messages.put_nowait(None)
            return
        body = bytes(st.body)
        self.h2.consumed(st.id, len(body))
        if len(body) < 5 or body[0] or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._fail(st, _INTERNAL if body[:1] != b"\x01" else _UNIMPLEMENTED, "expected one uncompressed request message")
            return
        st.task = asyncio.create_task(self._serve(st, body[5:]))

    async def _requests(self, st: _Stream) -> AsyncIterator[Any]:
        assert st.messages is not None
        decode = st.handler.request_deserializer
        while (item := await st.messages.get()) is not None:
            data, size = item
            self.h2.consumed(st.id, size)
            self.flush()
            yield decode(data) if decode else data

    def _expire(self, st: _Stream) -> None:
        st.timer = None
        if st.finished:
            return
        if st.task is not None:
            st.expired = True
            st.task.cancel()
        else:  # the request is not all here yet
            self._fail(st, _DEADLINE, "Deadline Exceeded")

    async def _serve_held(self, st: _Stream) -> None:
        """A call that came while the server was opening, served once its method is there."""
        assert st.messages is not None and self.server.opening is not None
        try:
            await self.server.opening.wait()
        except OpeningFailed as exc:
            return self._finish(st, _UNAVAILABLE, str(exc))
        except asyncio.CancelledError:
            if st.expired:
                self._finish(st, _DEADLINE, "Deadline Exceeded")
            return
        st.handler = handler = self.server.handler(st.method, st.context)  # type: ignore[assignment]
        assert handler is not None  # the server is open: every path has a handler
        if handler.request_streaming:
            return await self._serve(st, self._requests(st))
        # one request message, as _ended takes it from a call served at once
        first, end = await st.messages.get(), await st.messages.get()
        if first is None or end is not None:
            return self._finish(st, _INTERNAL, "expected one uncompressed request message")
        self.h2.consumed(st.id, first[1])
        await self._serve(st, first[0])

    # -- answers ---------------------------------------------------------------------------

    async def _serve(self, st: _Stream, request: Any) -> None:
        h, ctx = st.handler, st.context
        try:
            if not h.request_streaming and h.request_deserializer is not None:
                try:
                    request = h.request_deserializer(request)
                except Exception:
                    return self._finish(st, _INTERNAL, "Exception deserializing request!")
            serialize = h.response_serializer

            def encode(reply: Any) -> bytes:  # bytes: encoded already (rpc.preencoded)
                return serialize(reply) if serialize and type(reply) is not bytes else reply

            if h.response_streaming:
                replies = (h.stream_stream if h.request_streaming else h.unary_stream)(request, ctx)
                async for reply in replies:
                    await self._send(st, encode(reply))
                    self.flush()
            else:
                reply = await (h.stream_unary if h.request_streaming else h.unary_unary)(request, ctx)
                await self._send(st, encode(reply))
            self._finish(st, _OK, "")
        except aio.AbortError:
            self._finish(st, ctx.code.value[0], ctx.details)
        except _TooLarge as exc:
            self._finish(st, _EXHAUSTED, str(exc))
        except asyncio.CancelledError:
            if st.expired:
                self._finish(st, _DEADLINE, "Deadline Exceeded")
            # else: reset by the client, the connection lost or the server stopping
        except Exception as exc:  # as grpc.aio answers a handler's bug
            log.exception("%s failed", st.method)
            self._finish(st, _UNKNOWN, f"Unexpected {type(exc)}: {exc}")

    async def _send(self, st: _Stream, payload: bytes) -> None:
        if len(payload) > self.server.max_message:
            raise _TooLarge(len(payload), self.server.max_message)
        h2 = self.h2
        if not st.headers_sent:
            st.headers_sent = True
            h2.send_headers(st.id, RESPONSE_HEADERS)
        data = memoryview(b"\x00" + struct.pack(">I", len(payload)) + payload)
        pos = h2.send_data(st.id, data)
        while pos < len(data):  # the client's window is full: wait until it reads
            self.flush()
            st.window.clear()
            if h2.sendable(st.id) <= 0:
                await st.window.wait()
            if st.finished or self.closed:
                raise asyncio.CancelledError()
            pos += h2.send_data(st.id, data[pos:])
        if not self.writable.is_set():
            self.flush()
            await self.writable.wait()

    def _fail(self, st: _Stream, code: int, message: str) -> None:
        if st.task is not None:
            st.task.cancel()
        self._finish(st, code, message)

    def _finish(self, st: _Stream, code: int, message: str) -> None:
        if st.timer is not None:
            st.timer.cancel()
        if st.finished:
            return
        st.finished = True
        self.streams.pop(st.id, None)
        if self.closed:
            return
        fields = [(b"grpc-status", b"%d" % code)]
        if message:  # cut so the block fits the one 16 KiB frame every peer takes
            fields.append((b"grpc-message", _encode_message(message[:4096])))
        self.h2.send_headers(st.id, trailer_block(fields, with_response_headers=not st.headers_sent), end=True)
        if not st.client_ended:
            self.h2.reset(st.id, NO_ERROR)  # we will read no more of it
        self.flush()


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Sent message larger than max ({size} vs. {limit})")


class Server:
    """Registration and life cycle as grpc.aio.Server's, serving UNIX sockets."""

    def __init__(self, max_message: int = 4 << 20, opening: Opening | None = None) -> None:
        self.max_message = max_message
        self.opening = opening  # while pending, a call for a method not yet here waits
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._paths: list[str] = []
        self._listeners: list[asyncio.AbstractServer] = []
        self.connections: set[_Connection] = set()
        self._stopped = asyncio.Event()
        self.stopping = False

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def add_insecure_port(self, address: str) -> int:
        if not address.startswith("unix:"):
            raise ValueError(f"{address}: only unix: addresses are served")
        self._paths.append(address.removeprefix("unix:").removeprefix("//"))
        return 0

    def handler(self, path: str, context: ServicerContext) -> grpc.RpcMethodHandler | None:
        """The method's handler; None while the server is opening and has not got it yet."""
        handler = self._methods.get(path)
        if handler is None and self.opening is not None and self.opening.pending:
            return None
        if handler is None:
            details = _CallDetails(path, context.invocation_metadata())
            for generic in self._generic:
                if (handler := generic.service(details)) is not None:  # type: ignore[arg-type]
                    break
            else:
                handler = grpc.unary_unary_rpc_method_handler(_unimplemented)
        return handler

    def protocol(self) -> asyncio.Protocol:
        """A connection of this server, for a listener that is not the server's own."""
        return _Connection(self)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for path in self._paths:
            if os.path.exists(path):
                os.unlink(path)
            self._listeners.append(await loop.create_unix_server(lambda: _Connection(self), path))

    async def stop(self, grace: float | None) -> None:
        """Stop taking connections; say GOAWAY; give running calls ``grace`` seconds."""
        self.stopping = True
        for listener in self._listeners:
            listener.close()
        for conn in list(self.connections):
            conn.h2.go_away()
            conn.flush()
        tasks = [st.task for conn in self.connections for st in conn.streams.values() if st.task is not None]
        if tasks and grace:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.connections):
            assert conn.transport is not None
            conn.transport.close()
            conn.connection_lost(None)
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


async def _unimplemented(request: bytes, context: ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


# the stand-in handler of a held call: request-streaming, so its messages are kept as they come
_HELD = grpc.stream_stream_rpc_method_handler(_unimplemented)
