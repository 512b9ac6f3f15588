"""The bus: one NATS connection per process, msgpack request/reply, events.

* ``request`` carries a deadline. A call no instance received (none serves it: a service
  restarting) waits and is sent again until that deadline runs out. A call received by an
  instance that may have died (a service or nats-server announced a restart) is sent again
  at once: idempotent ones as they are, the others with the same request id, which the
  serving side looks up in its journal so the work is done once (libs/journal.py).
* ``serve`` binds a handler to a subject in a queue group, so any service can run as
  several instances; each message is handled in its own task.
* ``announce`` tells every caller that a service instance (re)started, on ``<prefix>.hello``.
* Replies are ``{"r": result}`` or ``{"e": {"code", "message"}}``: errors cross the bus
  as the same ``FlotillaError`` class the service raised.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from . import metrics
from .errors import (
    Aborted, Canceled, DeadlineExceeded, FlotillaError, InstanceGone, Internal, InvalidArgument, ResourceExhausted,
    Unavailable, Unknown,
)
from .journal import Journal
from .routes import Route
from .subjects import hello, host_stem, inbox, on_host
from .wire import WireError, pack, unpack

log = logging.getLogger("flotilla.bus")

R = TypeVar("R")
Handler = Callable[[Any], Awaitable[Any]]
EventHandler = Callable[[Any], Awaitable[None]]

_BACKOFF_START, _BACKOFF_MAX = 0.02, 0.5
_FIRST_ATTEMPT = 1.0  # seconds an idempotent call waits before asking again
REQUEST_ID = "Flotilla-Request"    # header: a non-idempotent call's id, the same on every resend
DEADLINE = "Flotilla-Deadline"     # header: when its caller gives up (unix seconds)
# outcomes a repeat must not be given again: the next attempt may well succeed
_TRANSIENT = frozenset(cls.code for cls in (Unavailable, DeadlineExceeded, Aborted, Canceled, Internal, Unknown))
_REPLAYING: contextvars.ContextVar[bool] = contextvars.ContextVar("flotilla_replaying", default=False)


def replaying() -> bool:
    """True in a handler that runs a call again after the instance that had it died: its
    work may be done already (a create may find what it creates; a delete, nothing)."""
    return _REPLAYING.get()


def _service_of(subject: str) -> str:
    """``<prefix>.<service>...`` -> service: whose restart may have lost this call."""
    parts = subject.split(".", 2)
    return parts[1] if len(parts) > 2 else ""


class Bus:
    def __init__(self, nc: NATS, name: str, host: str = "") -> None:
        self.nc = nc
        self.name = name
        self.host = host  # calls to a shared service go to this host's instances first
        self.instance = uuid.uuid4().hex[:16]  # this process' connection, in journals and hellos
        self.journal: Journal | None = None    # where served non-idempotent calls are recorded
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: list[Any] = []
        self._pending: dict[str, set[asyncio.Future[Any]]] = {}  # calls under way, by callee service
        self._resend: set[asyncio.Future[Any]] = set()            # ... cancelled to be sent again
        self._running: dict[str, asyncio.Future[bytes]] = {}      # served calls by request id
        self._announced: tuple[str, dict[str, str], str] | None = None  # (prefix, hello, instance ping)

    @classmethod
    async def connect(cls, url: str, name: str, *, credentials: str | os.PathLike[str] = "",
                      connect_timeout: float = 5.0, host: str = "") -> "Bus":
        """Connect as ``name``; with ``credentials`` (an nkey seed file ``<user>.nk``) sign in
        as that user, whose replies come to its own inbox ``_INBOX.<user>`` (the only one
        nats-server lets it read, docs/security.md)."""
        bus: Bus | None = None

        async def reconnected() -> None:
            metrics.BUS_RECONNECTS.inc()
            log.info("nats reconnected")
            if bus is not None:
                await bus._reconnected()

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
        bus = cls(nc, name, host)
        return bus

    async def stop_serving(self, grace: float = 5.0) -> None:
        """Take no more requests and give those in progress ``grace`` seconds to answer;
        a caller whose call is cut off sends it again to the next instance (``announce``)."""
        serving, self._serving = self._serving, []
        for sub in serving:
            try:
                await sub.unsubscribe()
            except Exception:  # already gone with a closed connection
                pass
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

    async def close(self, grace: float = 5.0) -> None:
        """Stop serving (as ``stop_serving``), then drain the connection."""
        await self.stop_serving(grace)
        if not self.nc.is_closed:
            await self.nc.drain()
        for task in list(self._tasks):
            task.cancel()

    # -- client side -------------------------------------------------------------------

    async def request(self, subject: str, payload: Any = None, *, timeout: float = 10.0,
                      idempotent: bool = False, instance_bound: bool = False) -> Any:
        """Call ``subject`` and return its result, raising the service's error.

        ``timeout`` is the whole call's deadline. Every call is sent again while no instance
        receives it, and at once when the callee's service or the bus restarts under it;
        idempotent calls are also sent again when an attempt takes long (an instance killed
        mid-call never answers). Calls that are not idempotent carry a request id.
        ``instance_bound`` calls go to one instance's own subject: when nobody receives one,
        that instance is gone, and ``InstanceGone`` says so at once.
        """
        data = pack(payload)
        deadline = time.monotonic() + timeout
        headers = None
        if not idempotent:
            headers = {REQUEST_ID: uuid.uuid4().hex, DEADLINE: f"{time.time() + timeout:.3f}"}
        service = _service_of(subject)
        # a shared service's instances on this host first; none there: any instance
        here = on_host(subject, self.host) if self.host else None
        backoff = _BACKOFF_START
        # idempotent calls give each attempt a growing slice of the deadline so a lost one is
        # sent again, not waited out
        attempt = _FIRST_ATTEMPT
        unheard = False  # the last attempt reached no instance
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if unheard:
                    raise Unavailable(f"{subject}: no service answers: unavailable")
                raise DeadlineExceeded(f"{subject}: context deadline exceeded")
            unheard = False
            call = asyncio.ensure_future(self.nc.request(
                here or subject, data, timeout=min(remaining, attempt) if idempotent else remaining, headers=headers))
            pending = self._pending.setdefault(service, set())
            pending.add(call)
            try:
                msg = await call
                break
            except asyncio.CancelledError:
                if call not in self._resend:
                    raise  # our caller gave up
                # the callee's service restarted under this call: send it again now
                metrics.BUS_RETRIES.labels(subject).inc()
                continue
            except NoRespondersError:
                if here is not None:  # nobody received it: the same call to any instance
                    here = None
                    continue
                if instance_bound:
                    raise InstanceGone(f"{subject}: the instance that served it is gone: unavailable") from None
                unheard = True  # nobody received it, so sending it again is safe for any call
            except NatsTimeout:
                if not idempotent or deadline - time.monotonic() <= 0:
                    raise DeadlineExceeded(f"{subject}: context deadline exceeded") from None
                attempt *= 2
            except nats.errors.MaxPayloadError:
                raise ResourceExhausted(f"{subject}: request of {len(data)} bytes exceeds the bus limit: "
                                        "resource exhausted") from None
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                if self.nc.is_closed:
                    raise Unavailable(f"{subject}: bus closed: unavailable") from None
            finally:
                pending.discard(call)
                self._resend.discard(call)
            metrics.BUS_RETRIES.labels(subject).inc()
            await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, _BACKOFF_MAX)
        return decode_reply(msg.data)

    async def call(self, subject: str, route: "Route[Any, R]", request: Any = None, *,
                   timeout: float | None = None) -> R:
        """Call ``route`` on ``subject`` (its service's stem + the route's method) and
        return its reply as the route's record."""
        data = await self.request(subject, request, timeout=timeout or route.timeout, idempotent=route.idempotent)
        return route.decode_reply(data)

    def _send_again(self, service: str | None) -> None:
        """Send the calls under way to ``service`` (None: every call) again."""
        groups = self._pending.values() if service is None else [self._pending.get(service, set())]
        for calls in groups:
            for call in list(calls):
                if not call.done():
                    self._resend.add(call)
                    call.cancel()

    async def follow_restarts(self, prefix: str) -> None:
        """Listen for ``announce``: a call under way to a service that announces a restart
        may have been lost with the instance that had it, so it is sent again."""
        async def restarted(msg: Msg) -> None:
            try:
                service = unpack(msg.data).get("service", "")
            except (WireError, AttributeError):
                return
            if msg.headers is None or msg.headers.get("instance") != self.instance:
                self._send_again(service)

        await self.nc.subscribe(hello(prefix), cb=restarted)

    async def announce(self, prefix: str, service: str, base: str) -> None:
        """Say that this instance of ``service`` (re)started. It answers its own ping on
        ``<base>.i.<instance>.ping`` (``base`` is its service's subjects' stem), which is how
        another instance tells whether it is still alive."""
        async def ping(_req: object) -> str:
            return self.instance
        await self.serve(_instance_ping(base, self.instance), ping, queue="", method="ping")
        self._announced = (prefix, {"service": service}, base)
        await self.nc.publish(hello(prefix), pack({"service": service}), headers={"instance": self.instance})

    async def _alive(self, instance: str) -> bool:
        """Whether another instance of our service still answers (the farm over)."""
        if self._announced is None:
            return True  # not told how to ask: never take a call away from anyone
        try:
            await self.nc.request(_instance_ping(self._announced[2], instance), b"", timeout=2.0)
            return True
        except NoRespondersError:
            return False
        except Exception:  # slow or cut off: alive as far as we can tell
            return True

    async def _reconnected(self) -> None:
        # replies sent while we were away are lost, and so may be requests we sent
        self._send_again(None)
        if self._announced is not None:
            prefix, body, _ = self._announced
            await self.nc.publish(hello(prefix), pack(body), headers={"instance": self.instance})

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
        """Answer requests on ``subject``; the queue group defaults to the subject. A call
        that carries a request id is done once however often it is sent (``_once``)."""
        name = method or subject

        async def answer(msg: Msg) -> tuple[bytes, int]:
            try:
                try:
                    request = unpack(msg.data)
                except WireError as exc:
                    raise InvalidArgument(f"{name}: request {exc.message}") from None
                reply = pack({"r": await handler(request)})
                code = 0
            except FlotillaError as exc:
                code, reply = exc.code, pack({"e": exc.to_wire()})
            except Exception as exc:
                log.exception("%s failed", name)
                code, reply = Internal.code, pack({"e": Internal(f"{name}: {exc}").to_wire()})
            if len(reply) > self.nc.max_payload:
                code = ResourceExhausted.code
                reply = pack({"e": ResourceExhausted(
                    f"{name}: reply of {len(reply)} bytes exceeds the bus limit: resource exhausted").to_wire()})
            return reply, code

        async def run(msg: Msg) -> None:
            started = time.perf_counter()
            request_id = msg.headers.get(REQUEST_ID, "") if msg.headers else ""
            if request_id:
                reply, code = await self._once(f"{name}/{request_id}", msg, answer)
            else:
                reply, code = await answer(msg)
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

    async def serve_routes(self, stem: str, routes: "Iterable[tuple[Route[Any, Any], Callable[[Any], Awaitable[Any]]]]",
                           *, queue: str | None = None, label: str = "") -> None:
        """Serve each route on ``<stem>.<method>``; each handler gets the route's request
        record (a request that does not make one is InvalidArgument)."""
        for route, handler in routes:
            async def typed(payload: Any, route: Route[Any, Any] = route,
                            handler: Callable[[Any], Awaitable[Any]] = handler) -> Any:
                return await handler(route.decode_request(payload))
            await self.serve(f"{stem}.{route.method}", typed, queue=queue, method=label + route.method)

    async def serve_shared(self, stem: str, routes: "Iterable[tuple[Route[Any, Any], Callable[[Any], Awaitable[Any]]]]",
                           *, label: str = "") -> None:
        """A shared service's routes for any caller (queue group ``<stem>.<method>``) and for
        this host's callers (``<stem>.h.<host>.<method>``, see ``request``)."""
        routes = list(routes)
        await self.serve_routes(stem, routes, label=label)
        if self.host:
            await self.serve_routes(host_stem(stem, self.host), routes, label=label)

    async def _once(self, key: str, msg: Msg, answer: Callable[[Msg], Awaitable[tuple[bytes, int]]]
                    ) -> tuple[bytes, int]:
        """Run a call with a request id once: a repeat that reaches this instance while it
        runs waits for the same answer; with a journal, a repeat that reaches any instance
        later gets the recorded one (libs/journal.py)."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        done: asyncio.Future[tuple[bytes, int]] = asyncio.get_running_loop().create_future()
        self._running[key] = done
        recorded: asyncio.Future[None] | None = None
        try:
            result, recorded = await self._journaled(key, msg, answer)
            done.set_result(result)
            return result
        except BaseException as exc:
            done.set_exception(exc)
            done.exception()  # retrieved: a repeat that waited gets it; none need to
            raise
        finally:
            if recorded is None:
                del self._running[key]
            else:  # a repeat finds the answer here until the journal has it
                self._tasks.add(recorded)  # a stopping instance waits for it too
                recorded.add_done_callback(lambda f: self._recorded(key, f))

    def _recorded(self, key: str, recording: "asyncio.Future[None]") -> None:
        self._running.pop(key, None)
        self._tasks.discard(recording)
        if not recording.cancelled() and recording.exception() is not None:
            log.warning("request %s: answer not recorded: %s", key, recording.exception())

    async def _journaled(self, key: str, msg: Msg, answer: Callable[[Msg], Awaitable[tuple[bytes, int]]]
                         ) -> tuple[tuple[bytes, int], asyncio.Future[None] | None]:
        """The call's answer, and the recording of it under way (the caller is answered
        first: a death before it lands makes a repeat a replay, which handlers take)."""
        journal = self.journal
        if journal is None:
            return await answer(msg), None
        try:
            give_up = float(msg.headers.get(DEADLINE, "0")) if msg.headers else 0.0
        except ValueError:
            give_up = 0.0
        give_up = give_up or time.time() + 60.0
        replay = False
        while True:
            claim = await asyncio.to_thread(journal.claim, key, self.instance)
            if claim.reply is not None:
                return (claim.reply, 0), None
            if not claim.runner:
                break
            if claim.runner != self.instance and await self._alive(claim.runner):
                # another live instance runs it: its answer is ours
                while time.time() < give_up:
                    await asyncio.sleep(0.05)
                    reply = await asyncio.to_thread(journal.reply, key)
                    if reply is not None:
                        return (reply, 0), None
                raise_ = DeadlineExceeded(f"{key}: still running elsewhere: context deadline exceeded")
                return (pack({"e": raise_.to_wire()}), raise_.code), None
            if await asyncio.to_thread(journal.take_over, key, claim.runner, self.instance):
                replay = True  # its instance died, maybe after the work: say so to the handler
                break
        token = _REPLAYING.set(replay)
        try:
            reply, code = await answer(msg)
        finally:
            _REPLAYING.reset(token)
        if code in _TRANSIENT:
            await asyncio.to_thread(journal.release, key)
            return (reply, code), None
        return (reply, code), asyncio.ensure_future(asyncio.to_thread(journal.record, key, reply))

def _instance_ping(base: str, instance: str) -> str:
    return f"{base}.i.{instance}.ping"


def decode_reply(data: bytes) -> Any:
    reply = unpack(data)
    if not isinstance(reply, dict):
        raise Internal("malformed reply on the bus")
    if "e" in reply:
        raise FlotillaError.from_wire(reply["e"])
    return reply.get("r")
