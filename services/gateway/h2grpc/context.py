"""What a servicer method sees of its call: the part of grpc.aio's ServicerContext the
gateway uses (metadata, deadline, abort)."""

from __future__ import annotations

import asyncio
from typing import NoReturn

import grpc
from grpc import aio

# headers that are HTTP/2's or gRPC's own, not the caller's metadata
_TRANSPORT_HEADERS = frozenset({"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"})
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class ServicerContext:
    __slots__ = ("_metadata", "deadline", "code", "details")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self._metadata = tuple((k, v) for k, v in headers if k[0] != ":" and k not in _TRANSPORT_HEADERS)
        self.deadline: float | None = None
        for k, v in headers:
            if k == "grpc-timeout" and len(v) >= 2 and v[-1] in _TIMEOUT_UNITS and v[:-1].isdigit():
                self.deadline = asyncio.get_running_loop().time() + int(v[:-1]) * _TIMEOUT_UNITS[v[-1]]
        self.code = grpc.StatusCode.OK
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> NoReturn:
        # grpc.aio's own exception, so code written for either server catches the same thing
        self.code, self.details = code, details
        raise aio.AbortError(details)
