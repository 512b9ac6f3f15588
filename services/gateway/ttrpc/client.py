"""A small asyncio ttrpc client: the tests' (and an operator's) way to speak to the
endpoint the way containerd's Go client does, one request per odd stream id, answers
matched by id in any order."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

from .protocol import (MAX_MESSAGE, REQUEST, RESPONSE, DecodeError, Frame, FrameDecoder, Request, Response, Status,
                       decode_response, encode_request, frame)


class TTRPCError(Exception):
    """A call answered with a status other than OK."""

    def __init__(self, status: Status) -> None:
        super().__init__(f"ttrpc status {status.code}: {status.message}")
        self.status = status


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1, 2)  # clients open odd stream ids
        self._waiting: dict[int, asyncio.Future[Response]] = {}
        self._frames = FrameDecoder(MAX_MESSAGE)
        self._closed = ""  # why no answer can come any more, once the connection ended
        self._task = asyncio.create_task(self._receive())

    @classmethod
    async def connect(cls, path: str) -> "Client":
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, request: Request) -> Response:
        """The response, whatever its status."""
        stream_id = next(self._ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiting[stream_id] = future
        try:
            if self._closed:
                raise ConnectionError(self._closed)
            self._writer.write(frame(stream_id, REQUEST, encode_request(request)))
            await self._writer.drain()
            return await future
        finally:
            self._waiting.pop(stream_id, None)

    async def call(self, service: str, method: str, payload: bytes, *, timeout: float | None = None,
                   metadata: Sequence[tuple[str, str]] = ()) -> bytes:
        """The response's payload; a status other than OK raises TTRPCError."""
        nano = 0 if timeout is None else max(1, int(timeout * 1e9))
        resp = await self.send(Request(service, method, payload, nano, tuple(metadata)))
        if resp.status.code:
            raise TTRPCError(resp.status)
        return resp.payload

    async def _receive(self) -> None:
        error = "ttrpc: closed"
        try:
            while data := await self._reader.read(1 << 16):
                for item in self._frames.feed(data):
                    if not isinstance(item, Frame) or item.kind != RESPONSE:
                        continue
                    future = self._waiting.get(item.stream_id)
                    if future is not None and not future.done():
                        try:
                            future.set_result(decode_response(item.payload))
                        except DecodeError as exc:
                            future.set_exception(exc)
        except OSError as exc:
            error = f"ttrpc: {exc}"
        finally:
            self._closed = error
            for future in self._waiting.values():  # nothing more will come for them
                if not future.done():
                    future.set_exception(ConnectionError(error))

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
        try:
            await self._task
        except asyncio.CancelledError:
            pass
