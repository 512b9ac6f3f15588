"""The gateway's own gRPC server (services/gateway/h2grpc) against grpcio's client: unary,
both streaming directions with flow control, status codes and messages, deadlines,
cancellation, limits; and the sans-IO HTTP/2 connection on hand-made frames."""

from __future__ import annotations

import asyncio
import struct
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import hpack
import pytest
from grpc import aio

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbc_grpc
from flotilla.services.gateway import h2grpc
from flotilla.services.gateway.h2grpc import connection as h2
from flotilla.services.gateway.opening import Opening

MIB = 1 << 20


class Servicer(pbc_grpc.ContentServicer):
    """Info answers or aborts by digest; Read streams ``size`` bytes; Write echoes offsets."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def Info(self, request: pbc.InfoRequest, context: h2grpc.ServicerContext) -> pbc.InfoResponse:
        if request.digest == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "content digest missing: not found — ünïcode 100%")
        if request.digest == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.digest == "bug":
            raise RuntimeError("a bug")
        if request.digest == "big":
            return pbc.InfoResponse(info=pbc.Info(digest="x" * (5 * MIB)))
        ns = dict(context.invocation_metadata()).get("containerd-namespace", "")
        remaining = context.time_remaining()
        return pbc.InfoResponse(info=pbc.Info(digest=request.digest, size=len(request.digest),
                                              labels={"ns": ns, "deadline": "yes" if remaining else "no"}))

    async def Read(self, request: pbc.ReadContentRequest,
                   context: h2grpc.ServicerContext) -> AsyncIterator[pbc.ReadContentResponse]:
        sent = 0
        while sent < request.size:
            n = min(MIB, request.size - sent)
            yield pbc.ReadContentResponse(offset=sent, data=bytes([sent // MIB % 256]) * n)
            sent += n

    async def Write(self, request_iterator: AsyncIterator[pbc.WriteContentRequest],
                    context: h2grpc.ServicerContext) -> AsyncIterator[pbc.WriteContentResponse]:
        offset = 0
        async for req in request_iterator:
            offset += len(req.data)
            yield pbc.WriteContentResponse(action=req.action, offset=offset)


@dataclass
class Served:
    stub: pbc_grpc.ContentStub
    servicer: Servicer
    channel: aio.Channel
    path: str


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "grpc.sock")
        server = h2grpc.Server(max_message=4 * MIB)
        servicer = Servicer()
        pbc_grpc.add_ContentServicer_to_server(servicer, server)
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        channel = aio.insecure_channel(f"unix://{path}")
        try:
            yield Served(pbc_grpc.ContentStub(channel), servicer, channel, path)
        finally:
            await channel.close()
            await server.stop(grace=1)


async def test_unary_metadata_and_deadline(served: Served) -> None:
    stub = served.stub
    resp = await stub.Info(pbc.InfoRequest(digest="sha256:a"), metadata=(("containerd-namespace", "ns1"),))
    assert resp.info.digest == "sha256:a" and resp.info.labels == {"ns": "ns1", "deadline": "no"}
    resp = await stub.Info(pbc.InfoRequest(digest="d"), timeout=30)
    assert resp.info.labels["deadline"] == "yes"
    # many calls on one connection, concurrently
    got = await asyncio.gather(*(stub.Info(pbc.InfoRequest(digest=f"d{i}")) for i in range(200)))
    assert [r.info.digest for r in got] == [f"d{i}" for i in range(200)]


async def test_abort_keeps_code_and_message(served: Served) -> None:
    stub = served.stub
    with pytest.raises(aio.AioRpcError) as err:
        await stub.Info(pbc.InfoRequest(digest="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "content digest missing: not found — ünïcode 100%"
    with pytest.raises(aio.AioRpcError) as err:
        await stub.Info(pbc.InfoRequest(digest="bug"))
    assert err.value.code() == grpc.StatusCode.UNKNOWN and "a bug" in (err.value.details() or "")
    # the connection still serves
    assert (await stub.Info(pbc.InfoRequest(digest="ok"))).info.digest == "ok"


async def test_deadline_cancels_the_handler(served: Served) -> None:
    stub, servicer = served.stub, served.servicer
    with pytest.raises(aio.AioRpcError) as err:
        await stub.Info(pbc.InfoRequest(digest="slow"), timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(servicer.cancelled.wait(), 5)


async def test_client_cancel_cancels_the_handler(served: Served) -> None:
    stub, servicer = served.stub, served.servicer
    call = stub.Info(pbc.InfoRequest(digest="slow"))
    await asyncio.sleep(0.2)
    call.cancel()
    await asyncio.wait_for(servicer.cancelled.wait(), 5)
    assert (await stub.Info(pbc.InfoRequest(digest="ok"))).info.digest == "ok"


async def test_large_server_stream_respects_flow_control(served: Served) -> None:
    stub = served.stub
    size, got = 40 * MIB + 3, 0
    async for resp in stub.Read(pbc.ReadContentRequest(digest="x", size=size)):
        assert resp.offset == got and resp.data[:1] == bytes([got // MIB % 256])
        got += len(resp.data)
        if got < 4 * MIB:
            await asyncio.sleep(0.05)  # a slow reader: the server must wait for its window
    assert got == size


async def test_bidi_stream(served: Served) -> None:
    stub = served.stub
    call = stub.Write()
    total = 0
    for i in range(40):
        chunk = bytes([i]) * (MIB if i % 2 else 1000)
        total += len(chunk)
        await call.write(pbc.WriteContentRequest(action=pbc.WRITE, data=chunk))
        assert (await call.read()).offset == total
    await call.done_writing()
    assert await call.read() is aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_message_limits(served: Served) -> None:
    stub = served.stub
    with pytest.raises(aio.AioRpcError) as err:
        await stub.Info(pbc.InfoRequest(digest="y" * (5 * MIB)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(aio.AioRpcError) as err:  # an answer over the limit
        await stub.Info(pbc.InfoRequest(digest="big"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await stub.Info(pbc.InfoRequest(digest="ok"))).info.digest == "ok"


async def test_unknown_method_is_unimplemented(served: Served) -> None:
    call = served.channel.unary_unary("/no.such.Service/Method")
    with pytest.raises(aio.AioRpcError) as err:
        await call(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_garbage_closes_only_that_connection(served: Served) -> None:
    stub = served.stub
    reader, writer = await asyncio.open_unix_connection(served.path)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64)
    data = await asyncio.wait_for(reader.read(), 5)  # SETTINGS, then GOAWAY, then EOF
    assert h2.GOAWAY in _frame_kinds(data)
    writer.close()
    assert (await stub.Info(pbc.InfoRequest(digest="ok"))).info.digest == "ok"


async def test_reset_before_the_request_ends_sends_nothing_on_that_stream(served: Served) -> None:
    """A call reset while its body is still coming, with a deadline: when the deadline
    passes, nothing may be sent on the closed stream (the client would end the connection)."""
    reader, writer = await asyncio.open_unix_connection(served.path)
    block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"),
                                    (":path", "/containerd.services.content.v1.Content/Info"), (":authority", "x"),
                                    ("content-type", "application/grpc"), ("grpc-timeout", "100m")])
    writer.write(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0) + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block)
                 + h2.frame(h2.DATA, 0, 1, b"\0\0\0")
                 + h2.frame(h2.RST_STREAM, 0, 1, struct.pack(">I", h2.CANCEL)))
    await asyncio.sleep(0.4)  # past the deadline
    writer.write(h2.frame(h2.PING, 0, 0, b"87654321"))
    data = b""
    while h2.PING not in _frame_kinds(data):
        data += await asyncio.wait_for(reader.read(65536), 5)
    assert h2.HEADERS not in _frame_kinds(data) and h2.RST_STREAM not in _frame_kinds(data)
    writer.close()


def _frame_kinds(data: bytes) -> list[int]:
    kinds, pos = [], 0
    while pos + 9 <= len(data):
        kinds.append(data[pos + 3])
        pos += 9 + int.from_bytes(data[pos:pos + 3], "big")
    return kinds


# -- the sans-IO connection ---------------------------------------------------------------

def _headers_block(path: str) -> bytes:
    return hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                   (":authority", "x"), ("content-type", "application/grpc")])


def test_connection_headers_in_continuations_padding_ping_and_settings() -> None:
    conn = h2.H2Connection()
    assert _frame_kinds(conn.data_to_send()) == [h2.SETTINGS, h2.WINDOW_UPDATE]
    block = _headers_block("/a.B/C")
    padded = bytes((3,)) + block[:4] + b"\0\0\0"
    wire = (h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", 0x4, 1000))
            + h2.frame(h2.HEADERS, h2.PADDED, 1, padded) + h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[4:])
            + h2.frame(h2.DATA, h2.END_STREAM, 1, b"\0\0\0\0\0")
            + h2.frame(h2.PING, 0, 0, b"12345678"))
    events = []
    for i in range(0, len(wire), 7):  # byte by byte would do too: frames may arrive cut anywhere
        events += conn.receive(wire[i:i + 7])
    assert isinstance(events[0], h2.RequestReceived) and dict(events[0].headers)[":path"] == "/a.B/C"
    assert isinstance(events[1], h2.DataReceived) and events[1].ended and events[1].data == b"\0" * 5
    out = conn.data_to_send()
    assert _frame_kinds(out) == [h2.SETTINGS, h2.PING]  # the ACKs
    assert conn.sendable(1) == 1000  # the client's initial window, not the default
    assert conn.send_data(1, memoryview(b"x" * 5000)) == 1000
    conn.receive(h2.frame(h2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 50)))
    assert conn.sendable(1) == 50


def test_connection_refuses_protocol_errors() -> None:
    for wire in (h2.PREFACE + h2.frame(h2.DATA, 0, 0, b"x"),  # DATA on stream 0
                 h2.PREFACE + h2.frame(h2.HEADERS, h2.END_HEADERS, 2, _headers_block("/a")),  # even id
                 h2.PREFACE + h2.frame(h2.HEADERS, 0, 1, b"") + h2.frame(h2.PING, 0, 0, b"12345678"),
                 h2.PREFACE + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\xff\xff\xff\xff")):  # bad HPACK
        with pytest.raises(h2.ProtocolError):
            h2.H2Connection().receive(wire)


# -- a server still opening (the gateway's front, services/gateway/opening.py) -------------

@pytest.fixture
async def opening() -> AsyncIterator[tuple[h2grpc.Server, Opening, pbc_grpc.ContentStub]]:
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "grpc.sock")
        gate = Opening()
        server = h2grpc.Server(max_message=4 * MIB, opening=gate)
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        channel = aio.insecure_channel(f"unix://{path}")
        try:
            yield server, gate, pbc_grpc.ContentStub(channel)
        finally:
            await channel.close()
            await server.stop(grace=1)


async def _write(stub: pbc_grpc.ContentStub) -> list[int]:
    async def requests() -> AsyncIterator[pbc.WriteContentRequest]:
        for chunk in (b"ab", b"cde"):
            yield pbc.WriteContentRequest(action=pbc.WRITE, data=chunk)
    return [r.offset async for r in stub.Write(requests())]


async def test_calls_that_come_while_opening_wait_for_their_method(
        opening: tuple[h2grpc.Server, Opening, pbc_grpc.ContentStub]) -> None:
    server, gate, stub = opening
    info = asyncio.ensure_future(stub.Info(pbc.InfoRequest(digest="sha256:a"), timeout=10))
    write = asyncio.ensure_future(_write(stub))
    read = asyncio.ensure_future(stub.Read(pbc.ReadContentRequest(size=3 * MIB)).read())
    expired = stub.Info(pbc.InfoRequest(digest="late"), timeout=0.3)
    with pytest.raises(aio.AioRpcError) as err:
        await expired
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not (info.done() or write.done() or read.done())
    pbc_grpc.add_ContentServicer_to_server(Servicer(), server)
    gate.opened()
    assert (await info).info.digest == "sha256:a"
    assert await write == [2, 5]
    assert len((await read).data) == MIB
    # once open, a method nobody registered is Unimplemented at once, as before
    async with aio.insecure_channel(f"unix://{server._paths[0]}") as channel:
        with pytest.raises(aio.AioRpcError) as err:
            await channel.unary_unary("/no.Such/Method")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_calls_held_when_the_opening_fails_are_unavailable(
        opening: tuple[h2grpc.Server, Opening, pbc_grpc.ContentStub]) -> None:
    _server, gate, stub = opening
    info = asyncio.ensure_future(stub.Info(pbc.InfoRequest(digest="sha256:a"), timeout=10))
    write = asyncio.ensure_future(_write(stub))
    await asyncio.sleep(0.2)
    gate.failed("nats: no servers available for connection")
    for call in (info, write):
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "the gateway did not start: nats: no servers available for connection"
