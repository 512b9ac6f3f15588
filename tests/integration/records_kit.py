"""What the tests of the gateway's kept records share (services/gateway/records.py): a
count of the requests that still reach a service, and a wait bounded well below the TTL."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from flotilla.libs.bus import Bus
from flotilla.libs.subjects import SHARED_SERVICES
from flotilla.services.gateway.records import TTL


async def count_requests(bus: Bus, subject: str, asked: dict[str, int] | None = None) -> dict[str, int]:
    """Requests seen on ``subject`` (wildcards allowed) from now on, by subject (added to
    ``asked`` when given). A shared service's are counted on its host subjects too (a caller
    with a host asks there first, libs/subjects.on_host), under the shared subject."""
    asked = {} if asked is None else asked

    async def count(msg: Any) -> None:
        parts = msg.subject.split(".")
        if len(parts) > 4 and parts[1] in SHARED_SERVICES and parts[2] == "h":
            parts = parts[:2] + parts[4:]
        name = ".".join(parts)
        asked[name] = asked.get(name, 0) + 1
    prefix, service, rest = subject.split(".", 2)
    for pattern in (subject, f"{prefix}.{service}.h.*.{rest}") if service in SHARED_SERVICES else (subject,):
        await bus.nc.subscribe(pattern, cb=count)
    await bus.nc.flush()
    return asked


def soon(check: Callable[[], bool]) -> None:
    """``check`` turns true within a quarter of the TTL: a change seen through its event, not
    by the record expiring."""
    deadline = time.monotonic() + TTL / 4
    while not check():
        assert time.monotonic() < deadline, "the gateway answered from a stale record"
        time.sleep(0.005)


def not_found(call: Callable[[], object]) -> bool:
    try:
        call()
        return False
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return True
