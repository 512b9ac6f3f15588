"""The gateway's ttrpc endpoint (services/gateway/ttrpc): the sans-IO protocol on hand-made
bytes (framing, split reads, oversized frames, bad messages), then the server on a real
UNIX socket (dispatch, Unimplemented, statuses, deadlines, concurrency, refusals, socket
life cycle) and Events.Forward through the gRPC servicer's code path."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from flotilla._api.containerd.api.services.events.v1 import events_pb2
from flotilla.libs.events import Event
from flotilla.services.gateway import h2grpc, ttrpc
from flotilla.services.gateway.events import EventsServicer
from flotilla.services.gateway.opening import Opening
from flotilla.services.gateway.ttrpc import protocol as tp

# -- protocol: messages ----------------------------------------------------------------------


def test_request_bytes_as_go_encodes_them() -> None:
    # written field by field as gogo/protobuf marshals ttrpc's Request struct
    data = (b"\x0a\x03svc" + b"\x12\x02Mt" + b"\x1a\x02\x08\x01" + b"\x20\xe8\x07"
            + b"\x2a\x08\x0a\x01k\x12\x03v\xc3\xa9")
    assert tp.decode_request(data) == tp.Request("svc", "Mt", b"\x08\x01", 1000, (("k", "vé"),))
    assert tp.encode_request(tp.decode_request(data)) == data


def test_request_round_trip_with_negative_timeout_and_repeated_metadata() -> None:
    req = tp.Request("a.b.v1.S", "M", b"\x00" * 300, -5, (("x", "1"), ("x", "2"), ("y", "")))
    assert tp.decode_request(tp.encode_request(req)) == req
    assert tp.decode_request(b"") == tp.Request("", "")


def test_request_skips_unknown_fields_of_every_wire_type() -> None:
    unknown = b"\x30\x96\x01" + b"\x39" + b"\x00" * 8 + b"\x42\x02hi" + b"\x4d" + b"\x00" * 4
    assert tp.decode_request(b"\x0a\x01s" + unknown + b"\x12\x01m") == tp.Request("s", "m")


@pytest.mark.parametrize("data, error", [
    (b"\x0a", "truncated varint"),
    (b"\x0a\x05abc", "runs past the message"),
    (b"\x08\x01", "wrong wire type"),            # service as a varint
    (b"\x22\x01\x00", "wrong wire type"),        # timeout as bytes
    (b"\x0b", "unsupported wire type 3"),        # a group
    (b"\x00\x01", "field number 0"),
    (b"\x20" + b"\xff" * 11, "longer than ten bytes"),
    (b"\x39\x00\x00", "truncated fixed-width"),
    (b"\x2a\x02\x08\x01", "wrong wire type"),    # a metadata key as a varint
])
def test_request_decode_errors(data: bytes, error: str) -> None:
    with pytest.raises(tp.DecodeError, match=error):
        tp.decode_request(data)


def test_response_encoding() -> None:
    # OK still carries an (empty) status, as ttrpc's Go server sends it
    assert tp.encode_response(tp.Response()) == b"\x0a\x00"
    assert tp.encode_response(tp.Response(tp.Status(), b"\x01\x02")) == b"\x0a\x00\x12\x02\x01\x02"
    assert tp.encode_response(tp.Response(tp.Status(12, "service x"))) == b"\x0a\x0d\x08\x0c\x12\x09service x"
    err = tp.Response(tp.Status(5, "not found ü"), b"")
    assert tp.decode_response(tp.encode_response(err)) == err


def test_response_decode_keeps_negative_codes_and_skips_details() -> None:
    status = b"\x08" + b"\xff" * 9 + b"\x01" + b"\x1a\x03\x0a\x01x"  # code -1, one detail
    assert tp.decode_response(b"\x0a" + bytes([len(status)]) + status) == tp.Response(tp.Status(-1, ""))


# -- protocol: frames ------------------------------------------------------------------------

def _request_frame(stream_id: int, service: str = "s", method: str = "m", payload: bytes = b"") -> bytes:
    return tp.frame(stream_id, tp.REQUEST, tp.encode_request(tp.Request(service, method, payload)))


def test_frame_header_layout() -> None:
    assert tp.frame(0x01020304, tp.RESPONSE, b"abc", flags=7) == b"\x00\x00\x00\x03\x01\x02\x03\x04\x02\x07abc"


def test_frames_cut_from_any_split() -> None:
    stream = _request_frame(1, payload=b"x" * 40) + _request_frame(3) + tp.frame(5, tp.REQUEST, b"")
    for step in (1, 2, 3, 7, 10, 11, len(stream)):
        dec = tp.FrameDecoder()
        got: list[tp.Frame | tp.Oversized] = []
        for i in range(0, len(stream), step):
            got += dec.feed(stream[i:i + step])
        assert [f.stream_id for f in got if isinstance(f, tp.Frame)] == [1, 3, 5], step
        assert dec.pending == 0


def test_oversized_frame_is_dropped_as_it_arrives() -> None:
    dec = tp.FrameDecoder(max_message=100)
    big = tp.frame(7, tp.REQUEST, b"z" * 1000)
    assert dec.feed(big[:500]) == []
    assert dec.pending == 510  # what is left to drop, none of it held
    assert dec._buf == bytearray()
    out = dec.feed(big[500:] + _request_frame(9))
    assert out[0] == tp.Oversized(7, 1000)
    assert isinstance(out[1], tp.Frame) and out[1].stream_id == 9


def test_server_connection_events() -> None:
    conn = tp.ServerConnection(max_message=64)
    events = conn.receive(
        _request_frame(1, "svc", "M", b"p")
        + _request_frame(2)                                  # even: the server's ids
        + tp.frame(3, tp.REQUEST, b"\x0a\x09short")          # not a Request
        + tp.frame(5, 3, b"\x00\x01")                        # a later ttrpc's data frame: ignored
        + tp.frame(7, tp.REQUEST, b"\x00" * 65)              # too big
        + _request_frame(9))
    assert events == [
        tp.RequestReceived(1, tp.Request("svc", "M", b"p")),
        tp.RequestRefused(2, tp.Status(tp.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")),
        tp.RequestRefused(3, tp.Status(tp.INVALID_ARGUMENT,
                                       "unmarshal request error: field 1: length 9 runs past the message")),
        tp.RequestRefused(7, tp.Status(tp.RESOURCE_EXHAUSTED, "message length 65 exceed maximum message size of 64")),
        tp.RequestReceived(9, tp.Request("s", "m")),
    ]
    assert conn.data_to_send() == b""
    conn.respond(1, tp.Response(tp.Status(), b"ok"))
    conn.respond(2, tp.Response(tp.Status(3, "bad")))
    out = conn.data_to_send()
    assert out == (tp.frame(1, tp.RESPONSE, b"\x0a\x00\x12\x02ok")
                   + tp.frame(2, tp.RESPONSE, b"\x0a\x07\x08\x03\x12\x03bad"))
    assert conn.data_to_send() == b""


# -- the server on a socket --------------------------------------------------------------------

class Methods:
    """A service whose methods say what they saw, abort, fail, wait or take a while."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def echo(self, payload: bytes, ctx: h2grpc.ServicerContext) -> bytes:
        md = ",".join(f"{k}={v}" for k, v in ctx.invocation_metadata())
        remaining = ctx.time_remaining()
        return b"%s|%s|%s" % (payload, md.encode(), b"deadline" if remaining else b"none")

    async def abort(self, payload: bytes, ctx: h2grpc.ServicerContext) -> bytes:
        await ctx.abort(grpc.StatusCode.NOT_FOUND, "thing: not found")

    async def bug(self, payload: bytes, ctx: h2grpc.ServicerContext) -> bytes:
        raise RuntimeError("a bug")

    async def wait(self, payload: bytes, ctx: h2grpc.ServicerContext) -> bytes:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"released"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as d:
        yield Path(d)


@pytest.fixture
async def served(sock_dir: Path) -> AsyncIterator[tuple[ttrpc.Server, Methods, str]]:
    server, methods = ttrpc.Server(max_message=1024), Methods()
    server.register("test.v1.T", {"Echo": methods.echo, "Abort": methods.abort, "Bug": methods.bug,
                                  "Wait": methods.wait})
    path = str(sock_dir / "g.sock.ttrpc")
    await server.start(path)
    yield server, methods, path
    await server.stop(grace=0)


async def test_calls_statuses_and_unimplemented(served: tuple[ttrpc.Server, Methods, str]) -> None:
    _server, _methods, path = served
    async with await ttrpc.Client.connect(path) as client:
        assert await client.call("test.v1.T", "Echo", b"hi", metadata=[("a", "1")]) == b"hi|a=1|none"
        # ttrpc's namespace header is also the gRPC one the servicers read; a deadline is seen
        got = await client.call("test.v1.T", "Echo", b"", timeout=30, metadata=[("containerd-namespace-ttrpc", "ns")])
        assert got == b"|containerd-namespace-ttrpc=ns,containerd-namespace=ns|deadline"
        cases = {("test.v1.T", "Abort"): (5, "thing: not found"), ("test.v1.T", "Bug"): (2, "a bug"),
                 ("test.v1.Nope", "Echo"): (12, "service test.v1.Nope"), ("test.v1.T", "Nope"): (12, "method Nope")}
        for (service, method), want in cases.items():
            resp = await client.send(tp.Request(service, method))
            assert (resp.status.code, resp.status.message, resp.payload) == (*want, b"")


async def test_calls_that_come_while_opening_wait_then_are_served_or_unavailable(sock_dir: Path) -> None:
    for failure in ("", "bus gone"):
        gate = Opening()
        server = ttrpc.Server(opening=gate)
        path = str(sock_dir / "o.sock.ttrpc")
        await server.start(path)
        try:
            async with await ttrpc.Client.connect(path) as client:
                call = asyncio.ensure_future(client.send(tp.Request("test.v1.T", "Echo", b"early")))
                # a held call's deadline runs while it waits
                late = await client.send(tp.Request("test.v1.T", "Echo", b"late", timeout_nano=100_000_000))
                assert (late.status.code, late.status.message) == (4, "context deadline exceeded")
                assert not call.done()
                server.register("test.v1.T", {"Echo": Methods().echo})
                if failure:
                    gate.failed(failure)
                else:
                    gate.opened()
                resp = await asyncio.wait_for(call, 5)
                if failure:
                    assert (resp.status.code, resp.status.message) == (14, "the gateway did not start: bus gone")
                else:
                    assert (resp.status.code, resp.payload) == (0, b"early||none")
        finally:
            await server.stop(grace=0)


async def test_deadline_and_out_of_order_answers(served: tuple[ttrpc.Server, Methods, str]) -> None:
    _server, methods, path = served
    async with await ttrpc.Client.connect(path) as client:
        slow = asyncio.create_task(client.call("test.v1.T", "Wait", b""))
        assert await client.call("test.v1.T", "Echo", b"fast") == b"fast||none"  # answered while Wait waits
        methods.release.set()
        assert await slow == b"released"
        methods.release.clear()
        resp = await client.send(tp.Request("test.v1.T", "Wait", timeout_nano=20_000_000))
        assert resp.status == tp.Status(4, "context deadline exceeded")
        resp = await client.send(tp.Request("test.v1.T", "Wait", timeout_nano=-1))  # already past
        assert resp.status.code == 4


async def _raw(path: str, data: bytes, answers: int) -> list[tp.Frame]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        for i in range(len(data)):  # one byte per write: every split the server may see
            writer.write(data[i:i + 1])
            await writer.drain()
        dec, got = tp.FrameDecoder(), []
        while len(got) < answers:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk, got
            got += [f for f in dec.feed(chunk) if isinstance(f, tp.Frame)]
        return got
    finally:
        writer.close()


async def test_bad_frames_answered_and_the_connection_kept(served: tuple[ttrpc.Server, Methods, str]) -> None:
    _server, _methods, path = served
    data = (_request_frame(2, "test.v1.T", "Echo") + tp.frame(3, tp.REQUEST, b"\xff")
            + tp.frame(5, tp.REQUEST, b"\x00" * 2000) + _request_frame(7, "test.v1.T", "Echo", b"after"))
    frames = await _raw(path, data, 4)
    got = {f.stream_id: tp.decode_response(f.payload) for f in frames}
    assert all(f.kind == tp.RESPONSE for f in frames)
    assert got[2].status.code == got[3].status.code == 3
    assert got[5].status == tp.Status(8, "message length 2000 exceed maximum message size of 1024")
    assert got[7] == tp.Response(tp.Status(), b"after||none")


async def test_lost_client_cancels_its_calls(served: tuple[ttrpc.Server, Methods, str]) -> None:
    server, methods, path = served
    client = await ttrpc.Client.connect(path)
    call = asyncio.create_task(client.call("test.v1.T", "Wait", b""))
    while not any(conn.tasks for conn in server.connections):
        await asyncio.sleep(0.01)
    await client.close()
    await asyncio.wait_for(methods.cancelled.wait(), 10)
    with pytest.raises((ConnectionError, asyncio.CancelledError)):
        await call


async def test_refused_peer_gets_no_answer(sock_dir: Path) -> None:
    seen: list[tuple[int, int]] = []
    server = ttrpc.Server(peer_check=lambda uid, gid: bool(seen.append((uid, gid))))
    server.register("test.v1.T", {"Echo": Methods().echo})
    path = str(sock_dir / "r.ttrpc")
    await server.start(path)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(_request_frame(1, "test.v1.T", "Echo"))
        try:  # closed unanswered: EOF, or a reset since it closed with our request unread
            assert await asyncio.wait_for(reader.read(), 10) == b""
        except ConnectionResetError:
            pass
        writer.close()
        assert seen == [(os.geteuid(), os.getegid())]
    finally:
        await server.stop()
    assert ttrpc.same_user(os.geteuid(), os.getegid()) and not ttrpc.same_user(os.geteuid() + 1, os.getegid())


async def test_socket_mode_replacement_and_removal(sock_dir: Path) -> None:
    path = sock_dir / "x.sock.ttrpc"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # left by a killed gateway
    stale.close()
    server = ttrpc.Server()
    await server.start(path)
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o660
    client = await ttrpc.Client.connect(str(path))
    resp = await client.send(tp.Request("any", "M"))
    assert resp.status == tp.Status(12, "service any")
    await server.stop(grace=1)
    assert not path.exists()
    with pytest.raises(ConnectionError):  # its connection closed with the server
        await client.call("any", "M", b"")
    await client.close()

    path.write_text("not a socket")  # never removed: bind refuses it
    with pytest.raises(OSError):
        await ttrpc.Server().start(path)
    assert path.read_text() == "not a socket"


async def test_a_newer_socket_is_not_removed(sock_dir: Path) -> None:
    path = sock_dir / "y.ttrpc"
    old, new = ttrpc.Server(), ttrpc.Server()
    await old.start(path)
    await new.start(path)  # a restarted gateway took the path over
    await old.stop()
    assert path.is_socket()
    await new.stop()
    assert not path.exists()


# -- Events.Forward: the gRPC servicer's code path ---------------------------------------------

class Hub:
    """What EventsServicer needs of the EventHub to forward: publish."""

    def __init__(self) -> None:
        self.published: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.published.append(event)


async def test_events_forward_publishes_through_the_grpc_servicer(sock_dir: Path) -> None:
    hub = Hub()
    server = ttrpc.Server()
    ttrpc.register_events(server, EventsServicer(hub))  # type: ignore[arg-type]
    path = str(sock_dir / "e.ttrpc")
    await server.start(path)
    try:
        async with await ttrpc.Client.connect(path) as client:
            env = events_pb2.Envelope(namespace="default", topic="/test")
            env.timestamp.seconds, env.timestamp.nanos = 1700000000, 5
            env.event.type_url, env.event.value = "t.Ev", b"\x08\x01"
            reply = await client.call(ttrpc.EVENTS_SERVICE, "Forward",
                                      events_pb2.ForwardRequest(envelope=env).SerializeToString())
            assert reply == b""  # google.protobuf.Empty
            assert hub.published == [Event(topic="/test", namespace="default", type_url="t.Ev",
                                           timestamp_ns=1700000000_000000005, value=b"\x08\x01")]
            # the gRPC Forward's own checks and texts
            bad = events_pb2.ForwardRequest(envelope=events_pb2.Envelope(namespace="default", topic="/test"))
            resp = await client.send(tp.Request(ttrpc.EVENTS_SERVICE, "Forward", bad.SerializeToString()))
            assert resp.status == tp.Status(3, "timestamp must be set on forwarded event: invalid argument")
            resp = await client.send(tp.Request(ttrpc.EVENTS_SERVICE, "Forward", b"\x0a\x05ab"))
            assert resp.status.code == 13 and resp.status.message.startswith("ttrpc: error unmarshalling payload: ")
            resp = await client.send(tp.Request(ttrpc.EVENTS_SERVICE, "Publish", b""))
            assert resp.status == tp.Status(12, "method Publish")
            assert len(hub.published) == 1
    finally:
        await server.stop()
