"""Watching a private suite's bus from a test: which requests went where."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from flotilla.testing import PrivateSuite


async def requests_seen(suite: PrivateSuite, patterns: list[str], body: Callable[[], object]) -> dict[str, list[str]]:
    """The subjects of the messages each of ``patterns`` (NATS wildcards under the suite's
    prefix) got while ``body`` ran in a thread."""
    bus = await suite.bus("spy")
    seen: dict[str, list[str]] = {p: [] for p in patterns}

    def recorder(pattern: str):  # type: ignore[no-untyped-def]
        async def record(msg) -> None:  # type: ignore[no-untyped-def]
            seen[pattern].append(msg.subject)
        return record
    for pattern in patterns:
        await bus.nc.subscribe(f"{suite.suite.prefix}.{pattern}", cb=recorder(pattern))
    await bus.nc.flush()
    try:
        await asyncio.to_thread(body)
        await bus.nc.flush()
    finally:
        await bus.close()
    return seen
