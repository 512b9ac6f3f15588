"""ttrpc's wire protocol (github.com/containerd/ttrpc, v1.1 as containerd 1.6 speaks it),
with no I/O: bytes in, events out, bytes to send buffered. The caller owns the socket
(server.py, client.py).

A connection carries frames: a 10-byte header (length of the payload, 4 bytes big-endian;
stream id, 4 bytes; type, 1 byte; flags, 1 byte) then the payload. The client sends a
``Request`` on a new odd stream id; the server answers with one ``Response`` on the same id.
Both are small protobuf messages, encoded here by hand: two messages of a handful of scalar
fields need no generated code (and no build step: ttrpc ships them as hand-written Go
structs, not as a .proto), and keeping them here keeps this module pure and testable.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = HEADER.size  # 10
MAX_MESSAGE = 4 << 20  # ttrpc's messageLengthMax: bigger frames are skipped and refused

REQUEST, RESPONSE = 0x1, 0x2  # later ttrpc versions add stream data frames: ignored, as v1.1 does

# the google.rpc codes this module itself answers with
OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED = 0, 3, 8

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class DecodeError(ValueError):
    """A payload that is not the protobuf message it should be."""


@dataclass(frozen=True, slots=True)
class Request:
    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0  # 0: no deadline; negative: already past it (the client computed it late)
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Status:
    """google.rpc.Status without its details (ttrpc's servers send none)."""
    code: int = OK
    message: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    status: Status = field(default_factory=Status)
    payload: bytes = b""


# -- protobuf, as far as these messages need it ---------------------------------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64/int32 go out as ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        if shift >= 70:
            raise DecodeError("varint longer than ten bytes")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value & ((1 << 64) - 1), pos


def _signed(value: int, bits: int = 64) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field; unknown ones are the caller's to skip.
    Fixed-width values come back as bytes; groups (wire types 3, 4) are refused."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        value: int | bytes
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            if size > len(data) - pos:
                raise DecodeError(f"field {number}: length {size} runs past the message")
            value, pos = data[pos:pos + size], pos + size
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if width > len(data) - pos:
                raise DecodeError(f"field {number}: truncated fixed-width value")
            value, pos = data[pos:pos + width], pos + width
        else:
            raise DecodeError(f"field {number}: unsupported wire type {wire}")
        yield number, wire, value


def _expect(number: int, wire: int, want: int) -> None:
    if wire != want:
        raise DecodeError(f"field {number}: wrong wire type {wire}")


def _text(value: int | bytes) -> str:
    # Go's strings are bytes: take what the client sent rather than refuse it
    assert isinstance(value, bytes)
    return value.decode("utf-8", "replace")


def _len_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(value)) + value


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | _VARINT) + _varint(value)


def encode_request(req: Request) -> bytes:
    out = bytearray()
    if req.service:
        out += _len_field(1, req.service.encode())
    if req.method:
        out += _len_field(2, req.method.encode())
    if req.payload:
        out += _len_field(3, req.payload)
    if req.timeout_nano:
        out += _varint_field(4, req.timeout_nano)
    for key, value in req.metadata:
        out += _len_field(5, _len_field(1, key.encode()) + _len_field(2, value.encode()))
    return bytes(out)


def decode_request(data: bytes) -> Request:
    service = method = ""
    payload = b""
    timeout = 0
    metadata: list[tuple[str, str]] = []
    for number, wire, value in _fields(data):
        if number in (1, 2, 3, 5):
            _expect(number, wire, _LEN)
        elif number == 4:
            _expect(number, wire, _VARINT)
        if number == 1:
            service = _text(value)
        elif number == 2:
            method = _text(value)
        elif number == 3:
            assert isinstance(value, bytes)
            payload = value
        elif number == 4:
            assert isinstance(value, int)
            timeout = _signed(value)
        elif number == 5:
            assert isinstance(value, bytes)
            metadata.append(_decode_key_value(value))
    return Request(service, method, payload, timeout, tuple(metadata))


def _decode_key_value(data: bytes) -> tuple[str, str]:
    key = value = ""
    for number, wire, item in _fields(data):
        if number in (1, 2):
            _expect(number, wire, _LEN)
            if number == 1:
                key = _text(item)
            else:
                value = _text(item)
    return key, value


def encode_response(resp: Response) -> bytes:
    status = b""
    if resp.status.code:
        status += _varint_field(1, resp.status.code)
    if resp.status.message:
        status += _len_field(2, resp.status.message.encode("utf-8", "replace"))
    # the status goes out even when empty (code OK), as ttrpc's Go server always sets it
    out = _len_field(1, status)
    if resp.payload:
        out += _len_field(2, resp.payload)
    return out


def decode_response(data: bytes) -> Response:
    status, payload = Status(), b""
    for number, wire, value in _fields(data):
        if number in (1, 2):
            _expect(number, wire, _LEN)
            assert isinstance(value, bytes)
            if number == 1:
                status = _decode_status(value)
            else:
                payload = value
    return Response(status, payload)


def _decode_status(data: bytes) -> Status:
    code, message = OK, ""
    for number, wire, value in _fields(data):
        if number == 1:
            _expect(number, wire, _VARINT)
            assert isinstance(value, int)
            code = _signed(value, 32)
        elif number == 2:
            _expect(number, wire, _LEN)
            message = _text(value)
    return Status(code, message)


# -- frames ----------------------------------------------------------------------------------

def frame(stream_id: int, kind: int, payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(len(payload), stream_id, kind, flags) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    kind: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame longer than the limit, skipped unread: its stream is answered with an error."""
    stream_id: int
    length: int


class FrameDecoder:
    """Cuts a byte stream into frames, whatever the reads' boundaries. An oversized frame's
    payload is dropped as it arrives, never held, so one connection holds at most one
    frame of ``max_message`` bytes."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized payload still to drop
        self._skipped: Oversized | None = None

    def feed(self, data: bytes) -> list[Frame | Oversized]:
        buf = self._buf
        buf += data
        out: list[Frame | Oversized] = []
        while True:
            if self._skip:
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                if self._skip:
                    break
                assert self._skipped is not None
                out.append(self._skipped)
                self._skipped = None
            if len(buf) < HEADER_LENGTH:
                break
            length, stream_id, kind, flags = HEADER.unpack_from(buf)
            if length > self.max_message:
                del buf[:HEADER_LENGTH]
                self._skip, self._skipped = length, Oversized(stream_id, length)
                continue
            if len(buf) < HEADER_LENGTH + length:
                break
            payload = bytes(buf[HEADER_LENGTH:HEADER_LENGTH + length])
            del buf[:HEADER_LENGTH + length]
            out.append(Frame(stream_id, kind, flags, payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 between frames)."""
        return len(self._buf) + self._skip


# -- the server's side of a connection ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    request: Request


@dataclass(frozen=True, slots=True)
class RequestRefused:
    """A request that cannot be served: the caller answers it with ``status`` (respond())."""
    stream_id: int
    status: Status


Event = RequestReceived | RequestRefused


class ServerConnection:
    """One connection as ttrpc's server sees it: requests in, responses out."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._frames = FrameDecoder(max_message)
        self._out = bytearray()

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for item in self._frames.feed(data):
            if isinstance(item, Oversized):
                events.append(RequestRefused(item.stream_id, Status(
                    RESOURCE_EXHAUSTED, f"message length {item.length} exceed maximum message size of "
                                        f"{self._frames.max_message}")))
            elif item.kind != REQUEST:
                continue  # a frame type this version does not know: ignored for compatibility, as ttrpc does
            else:
                events.append(self._request(item))
        return events

    @staticmethod
    def _request(item: Frame) -> Event:
        # checked in ttrpc's order: the message first, then the stream id
        try:
            req = decode_request(item.payload)
        except DecodeError as exc:
            return RequestRefused(item.stream_id, Status(INVALID_ARGUMENT, f"unmarshal request error: {exc}"))
        if item.stream_id % 2 != 1:
            return RequestRefused(item.stream_id, Status(
                INVALID_ARGUMENT, "StreamID must be odd for client initiated streams"))
        return RequestReceived(item.stream_id, req)

    def respond(self, stream_id: int, response: Response) -> None:
        self._out += frame(stream_id, RESPONSE, encode_response(response))

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out
