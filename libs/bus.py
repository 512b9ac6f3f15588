"""The bus: one NATS connection per process, msgpack request/reply, events.

* ``request`` carries a deadline; idempotent calls are retried with backoff while no
  instance answers (a service restarting) until that deadline runs out.
* ``serve`` binds a handler to a subject in a queue group, so any service can run as
  several instances; each message is handled in its own task.
* Replies are ``{"r": result}`` or ``{"e": {"code", "message"}}``: errors cross the bus
  as the same ``FlotillaError`` class the service raised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from . import metrics
from .errors import DeadlineExceeded, FlotillaError, Internal, InvalidArgument, ResourceExhausted, Unavailable
from .subjects import inbox
from .wire import WireError, pack, unpack

log = logging.getLogger("flotilla.bus")

Handler = Callable[[Any], Awaitable[Any]]
EventHandler = Callable[[Any], Awaitable[None]]

# NATS' own limit is 8 MB in our server config; chunks stay well under it.
MAX_CHUNK = 1 << 20
_BACKOFF_START, _BACKOFF_MAX = 0.02, 0.5
_FIRST_ATTEMPT = 1.0  # seconds an idempotent call waits before asking again


class Bus:
    def __init__(self, nc: NATS, name: str) -> None:
        self.nc = nc
        self.name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: list[Any] = []

    @classmethod
    async def connect(cls, url: str, name: str, *, credentials: str | os.PathLike[str] = "",
                      connect_timeout: float = 5.0) -> "Bus":
        """Connect as ``name``; with ``credentials`` (an nkey seed file ``<user>.nk``) sign in
        as that user, whose replies come to its own inbox ``_INBOX.<user>`` (the only one
        nats-server lets it read, docs/security.md)."""
        async def reconnected() -> None:
            metrics.BUS_RECONNECTS.inc()
            log.info("nats reconnected")

        async def disconnected() -> None:
            log.warning("nats disconnected")

        async def error(exc: Exception) -> None:
            log.warning("nats error: %s", exc)

        auth: dict[str, Any] = {}
        if credentials:
            auth = {"nkeys_seed": os.fspath(credentials),
                    "inbox_prefix": inbox(Path(credentials).stem)}
        nc = await nats.connect(
            url, name=name, connect_timeout=connect_timeout, **auth,
            max_reconnect_attempts=-1, reconnect_time_wait=0.2,
            allow_reconnect=True, reconnected_cb=reconnected,
            disconnected_cb=disconnected, error_cb=error,
            pending_size=64 * 1024 * 1024,
        )
        return cls(nc, name)

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking requests, let those in progress answer, then drain the connection."""
        for sub in self._serving:
            try:
                await sub.unsubscribe()
            except Exception:  # already gone with a closed connection
                pass
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        if not self.nc.is_closed:
            await self.nc.drain()
        for task in list(self._tasks):
            task.cancel()

    # -- client side -------------------------------------------------------------------

    async def request(self, subject: str, payload: Any = None, *, timeout: float = 10.0,
                      idempotent: bool = False) -> Any:
        """Call ``subject`` and return its result, raising the service's error.

        ``timeout`` is the whole call's deadline. Idempotent calls are retried while no
        instance answers or an instance dies mid-call; others fail with Unavailable.
        """
        data = pack(payload)
        deadline = time.monotonic() + timeout
        backoff = _BACKOFF_START
        # An instance killed mid-call never answers: idempotent calls give each attempt a
        # growing slice of the deadline so a lost one is sent again, not waited out.
        attempt = _FIRST_ATTEMPT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{subject}: context deadline exceeded")
            try:
                msg = await self.nc.request(subject, data,
                                            timeout=min(remaining, attempt) if idempotent else remaining)
                break
            except NoRespondersError:
                if not idempotent:
                    raise Unavailable(f"{subject}: no service answers: unavailable") from None
            except NatsTimeout:
                if not idempotent or deadline - time.monotonic() <= 0:
                    raise DeadlineExceeded(f"{subject}: context deadline exceeded") from None
                attempt *= 2
            except nats.errors.MaxPayloadError:
                raise ResourceExhausted(f"{subject}: request of {len(data)} bytes exceeds the bus limit: "
                                        "resource exhausted") from None
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                if not idempotent:
                    raise Unavailable(f"{subject}: bus not connected: unavailable") from None
            metrics.BUS_RETRIES.labels(subject).inc()
            await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, _BACKOFF_MAX)
        return decode_reply(msg.data)

    async def publish(self, subject: str, payload: Any) -> None:
        await self.nc.publish(subject, pack(payload))

    async def subscribe(self, subject: str, handler: EventHandler, *, queue: str = "") -> Any:
        async def on_message(msg: Msg) -> None:
            try:
                await handler(unpack(msg.data))
            except Exception:  # a bad event must not kill the subscription
                log.exception("event handler failed on %s", msg.subject)

        sub = await self.nc.subscribe(subject, queue=queue, cb=on_message)
        await self.nc.flush()
        return sub

    # -- service side ------------------------------------------------------------------

    async def serve(self, subject: str, handler: Handler, *, queue: str | None = None,
                    method: str | None = None) -> Any:
        """Answer requests on ``subject``; the queue group defaults to the subject."""
        name = method or subject

        async def run(msg: Msg) -> None:
            started = time.perf_counter()
            code = 0
            try:
                try:
                    request = unpack(msg.data)
                except WireError as exc:
                    raise InvalidArgument(f"{name}: request {exc.message}") from None
                result = await handler(request)
                reply = pack({"r": result})
            except FlotillaError as exc:
                code = exc.code
                reply = pack({"e": exc.to_wire()})
            except Exception as exc:
                log.exception("%s failed", name)
                code = Internal.code
                reply = pack({"e": Internal(f"{name}: {exc}").to_wire()})
            if len(reply) > self.nc.max_payload:
                code = ResourceExhausted.code
                reply = pack({"e": ResourceExhausted(
                    f"{name}: reply of {len(reply)} bytes exceeds the bus limit: resource exhausted").to_wire()})
            if msg.reply:
                try:
                    await self.nc.publish(msg.reply, reply)
                except Exception:
                    log.warning("reply to %s lost", name)
            metrics.observe(name, code, time.perf_counter() - started)

        async def on_message(msg: Msg) -> None:
            task = asyncio.create_task(run(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        sub = await self.nc.subscribe(subject, queue=subject if queue is None else queue,
                                      cb=on_message)
        await self.nc.flush()  # the server knows the subscription before we say we serve
        self._serving.append(sub)
        return sub


def decode_reply(data: bytes) -> Any:
    reply = unpack(data)
    if not isinstance(reply, dict):
        raise Internal("malformed reply on the bus")
    if "e" in reply:
        raise FlotillaError.from_wire(reply["e"])
    return reply.get("r")
