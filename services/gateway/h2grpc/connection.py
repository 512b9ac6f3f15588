"""The server side of one HTTP/2 connection, as far as gRPC uses it, with no I/O.

``receive(bytes)`` parses frames and returns events; frames to send accumulate in an
output buffer that ``data_to_send()`` empties. The caller owns the socket (server.py).
Flow control: the client's windows limit what ``send_data`` may put out now; ours are
reopened as the caller reports data consumed (``consumed``), so a slow handler holds the
client back instead of filling memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x3, 0x6, 0x7, 0x8
_INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = 0x4, 0x5
_DEFAULT_WINDOW, _DEFAULT_FRAME = 65535, 16384
_MAX_WINDOW = (1 << 31) - 1

# what we offer: a window a whole 16 MiB message fits in, so a unary call never waits on
# one, and 1 MiB frames (fewer to parse when a client uses them)
STREAM_WINDOW = (16 << 20) + 1024
CONNECTION_WINDOW = 64 << 20
MAX_FRAME_IN = 1 << 20


class ProtocolError(Exception):
    """The peer broke HTTP/2: the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    headers: list[tuple[str, str]]
    ended: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    ended: bool
    flow: int  # what it took of the windows, padding included


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    stream_id: int  # 0: the connection's


Event = RequestReceived | DataReceived | StreamReset | WindowOpened


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream_id) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman: we never
    touch the dynamic table, so our header blocks need no encoder state."""
    return b"\x00" + _length(name) + name + _length(value) + value


def _length(data: bytes) -> bytes:
    n = len(data)
    if n < 127:
        return bytes((n,))
    out, n = bytearray((127,)), n - 127
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# ":status: 200" is static entry 8; content-type's name is static entry 31
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + _length(b"application/grpc") + b"application/grpc"


def trailer_block(fields: list[tuple[bytes, bytes]], *, with_response_headers: bool = False) -> bytes:
    block = b"".join(_literal(n, v) for n, v in fields)
    return RESPONSE_HEADERS + block if with_response_headers else block


class H2Connection:
    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._buffer = bytearray()
        self._preface_seen = False
        self._out: list[bytes] = []
        self._pending_headers: tuple[int, int, bytearray] | None = None  # waiting for CONTINUATION
        self.peer_max_frame = _DEFAULT_FRAME
        self._peer_initial_window = _DEFAULT_WINDOW
        self.connection_window = _DEFAULT_WINDOW  # what we may still send on the connection
        self.windows: dict[int, int] = {}  # per open stream: what we may still send on it
        self._unacked_connection = 0  # received and consumed, not yet given back
        self._unacked: dict[int, int] = {}
        self.highest_stream = 0
        self.last_stream: int | None = None  # set by go_away: streams above it are refused
        self._out.append(PREFACE_REPLY)

    # -- output ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send_headers(self, stream_id: int, block: bytes, end: bool = False) -> None:
        # our blocks are small: one frame always fits the 16 KiB every peer accepts
        self._out.append(frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), stream_id, block))
        if end:
            self._close(stream_id)

    def sendable(self, stream_id: int) -> int:
        return min(self.connection_window, self.windows.get(stream_id, 0))

    def send_data(self, stream_id: int, data: memoryview) -> int:
        """Frames as much of ``data`` as the windows allow; returns how much."""
        size = min(len(data), self.sendable(stream_id))
        limit, pos = self.peer_max_frame, 0
        while pos < size:
            n = min(limit, size - pos)
            self._out.append(struct.pack(">I", n)[1:] + b"\x00\x00" + struct.pack(">I", stream_id))  # DATA
            self._out.append(bytes(data[pos:pos + n]))
            pos += n
        self.connection_window -= size
        self.windows[stream_id] -= size
        return size

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        self._out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
        self._close(stream_id)

    def go_away(self, code: int = NO_ERROR) -> None:
        self.last_stream = self.highest_stream
        self._out.append(frame(GOAWAY, 0, 0, struct.pack(">II", self.highest_stream, code)))

    def refused(self, stream_id: int) -> bool:
        """A stream opened after our GOAWAY named a lower last stream: the client sends it
        again on another connection, so it must not run here too (RFC 9113 6.8)."""
        if self.last_stream is None or stream_id <= self.last_stream:
            return False
        self.reset(stream_id, REFUSED_STREAM)
        return True

    def consumed(self, stream_id: int, n: int) -> None:
        """``n`` bytes of the stream's data were taken by the handler: reopen the windows
        (in batches, so a stream of small messages does not answer each with two frames)."""
        self._unacked_connection += n
        if self._unacked_connection >= CONNECTION_WINDOW // 4:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._unacked_connection)))
            self._unacked_connection = 0
        if stream_id in self._unacked:
            self._unacked[stream_id] += n
            if self._unacked[stream_id] >= STREAM_WINDOW // 4:
                self._out.append(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", self._unacked[stream_id])))
                self._unacked[stream_id] = 0

    def _close(self, stream_id: int) -> None:
        self.windows.pop(stream_id, None)
        self._unacked.pop(stream_id, None)

    # -- input -------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        buf = self._buffer
        buf += data
        events: list[Event] = []
        pos = 0
        if not self._preface_seen:
            if len(buf) < len(PREFACE):
                return events
            if buf[:len(PREFACE)] != PREFACE:
                raise ProtocolError("not an HTTP/2 client (no preface)")
            self._preface_seen = True
            pos = len(PREFACE)
        end = len(buf)
        with memoryview(buf) as view:  # payloads copied once (a slice of buf would copy twice)
            while end - pos >= 9:
                length = int.from_bytes(view[pos:pos + 3], "big")
                if length > MAX_FRAME_IN:
                    raise ProtocolError(f"frame of {length} bytes", FRAME_SIZE_ERROR)
                if end - pos < 9 + length:
                    break
                kind, flags = buf[pos + 3], buf[pos + 4]
                stream_id = int.from_bytes(view[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(view[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream_id, payload, events)
        del buf[:pos]
        return events

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._pending_headers is not None and kind != CONTINUATION:
            raise ProtocolError("header block interrupted")
        if kind == DATA:
            if stream_id == 0:
                raise ProtocolError("DATA on stream 0")
            flow = len(payload)
            if flags & PADDED:
                payload = _unpad(payload)
            if stream_id in self._unacked:
                events.append(DataReceived(stream_id, payload, bool(flags & END_STREAM), flow))
            else:  # a stream we reset or finished: the data still used the connection's window
                self.consumed(0, flow)
        elif kind == HEADERS:
            if flags & PADDED:
                payload = _unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, payload, events)
            else:
                self._pending_headers = (stream_id, flags, bytearray(payload))
        elif kind == CONTINUATION:
            if self._pending_headers is None or self._pending_headers[0] != stream_id:
                raise ProtocolError("unexpected CONTINUATION")
            self._pending_headers[2].extend(payload)
            if flags & END_HEADERS:
                sid, first_flags, block = self._pending_headers
                self._pending_headers = None
                self._headers(sid, first_flags, bytes(block), events)
        elif kind == RST_STREAM:
            if stream_id in self._unacked or stream_id in self.windows:
                self._close(stream_id)
                events.append(StreamReset(stream_id))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload, events)
                self._out.append(frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload, events)
        elif kind == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE from a client")
        # PRIORITY, GOAWAY (the client finishes its calls, then closes) and unknown kinds are ignored

    def _headers(self, stream_id: int, flags: int, block: bytes, events: list[Event]) -> None:
        try:
            headers = self._decoder.decode(block, raw=False)
        except hpack.HPACKError as exc:
            raise ProtocolError(f"bad header block: {exc}", 0x9) from None  # COMPRESSION_ERROR
        if stream_id in self._unacked:
            return  # trailers from a client: gRPC has none to give us
        if stream_id <= self.highest_stream or stream_id % 2 == 0:
            raise ProtocolError(f"stream {stream_id} out of order")
        self.highest_stream = stream_id
        self.windows[stream_id] = self._peer_initial_window
        self._unacked[stream_id] = 0
        events.append(RequestReceived(stream_id, headers, bool(flags & END_STREAM)))  # type: ignore[arg-type]

    def _settings(self, payload: bytes, events: list[Event]) -> None:
        if len(payload) % 6:
            raise ProtocolError("SETTINGS of odd length", FRAME_SIZE_ERROR)
        for ident, value in struct.iter_unpack(">HI", payload):
            if ident == _INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise ProtocolError("initial window too large", FLOW_CONTROL_ERROR)
                delta, self._peer_initial_window = value - self._peer_initial_window, value
                for sid in self.windows:
                    self.windows[sid] += delta
                    events.append(WindowOpened(sid))
            elif ident == _MAX_FRAME_SIZE:
                self.peer_max_frame = value

    def _window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        if stream_id == 0:
            self.connection_window += increment
            events.append(WindowOpened(0))
        elif stream_id in self.windows:
            self.windows[stream_id] += increment
            events.append(WindowOpened(stream_id))


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("bad padding")
    return payload[1:len(payload) - payload[0]]


PREFACE_REPLY = (frame(SETTINGS, 0, 0, struct.pack(">HIHI", _INITIAL_WINDOW_SIZE, STREAM_WINDOW,
                                                   _MAX_FRAME_SIZE, MAX_FRAME_IN))
                 + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - _DEFAULT_WINDOW)))
