"""Flotilla's content store and snapshotter as a stock containerd's proxy plugins.

containerd's ``[proxy_plugins]`` of type ``content`` and ``snapshot`` speak containerd's own
Content and Snapshots gRPC APIs on a UNIX socket (docs/integrators.md). Each configured
consumer (one containerd) gets a socket of its own, ``<state>/proxy/<name>.sock``, and every
call on it is answered by the gateway's own Content and Snapshots servicers, in the Flotilla
namespace ``proxy.<name>``:

- Which socket, not which header, says whose call it is. containerd 1.6 forwards no
  ``containerd-namespace`` (nor ``containerd-lease``) to a proxy (its namespace interceptor
  is not installed), and its garbage collector walks and deletes with no namespace at all.
  It namespaces everything in its own database and expects one flat store below (backend
  keys are ``<ns>/<id>/<key>`` already), so one Flotilla namespace per consumer is exactly
  that store: ownership, ingests and snapshot keys per consumer, and a Delete from one
  consumer drops only that consumer's hold (the content service removes the bytes with the
  last holder). A header that does arrive is replaced, never added to.
- containerd's "shared" content policy asks the backend's Info before it writes a blob and
  takes an answer as "no bytes needed", with no later call the backend would see. So an
  Info that finds the blob stored for another consumer only makes this consumer a holder
  (a shared writer's commit: no bytes) and answers; that consumer's collector lets go of
  it later like of any other blob.
- The snapshotter name containerd sends (the proxy plugin's name) becomes a Flotilla
  snapshotter by configuration (``proxy_snapshotters``, default ``flotilla=overlayfs``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc import aio

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2 as pbs
from flotilla.libs.api.content import CONSUMER_NAMESPACE_PREFIX, ContentClient, Writer, digest_error
from flotilla.libs.api.snapshots import SNAPSHOTTERS
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import AlreadyExists, FlotillaError
from flotilla.libs.identifiers import validate_identifier

from . import h2grpc
from .fallback import UnimplementedHandler
from .rpc import NAMESPACE_KEY

log = logging.getLogger("flotilla.gateway.proxy")
CONTENT = f"/{pbc.DESCRIPTOR.services_by_name['Content'].full_name}/"
SNAPSHOTS = f"/{pbs.DESCRIPTOR.services_by_name['Snapshots'].full_name}/"
NAMESPACE_PREFIX = CONSUMER_NAMESPACE_PREFIX  # each consumer's: proxy.<name>
_DROPPED = frozenset({NAMESPACE_KEY, "containerd-lease"})  # a consumer's leases live in its own database
_NOT_FOUND = grpc.StatusCode.NOT_FOUND
_ADOPT_REF = "flotilla.proxy.adopt"
_SUN_PATH = 107  # bytes of a UNIX socket's path (sun_path, less its NUL)
# the methods served to consumers: containerd's two APIs, every method of them
_METHODS = frozenset(f"/{service.full_name}/{m.name}"
                     for service in (pbc.DESCRIPTOR.services_by_name["Content"],
                                     pbs.DESCRIPTOR.services_by_name["Snapshots"])
                     for m in service.methods)


@dataclass(frozen=True)
class Consumer:
    name: str          # from the configuration; names the socket
    namespace: str     # the Flotilla namespace its calls land in
    socket: Path


@dataclass(frozen=True)
class ProxySettings:
    consumers: tuple[Consumer, ...] = ()
    snapshotters: Mapping[str, str] = field(default_factory=dict)  # containerd's name -> Flotilla's


def _items(text: str) -> list[str]:
    # a TOML list reaches the Config as its str(): "['a', 'b']"
    return [p.strip(" '\"") for p in text.strip("[] ").replace("\n", ",").split(",") if p.strip(" '\"")]


def settings(cfg: Config) -> ProxySettings:
    """The consumers and snapshotter names ``cfg`` asks for; ValueError names a bad one."""
    consumers: list[Consumer] = []
    for name in _items(cfg.proxy_consumers):
        try:
            validate_identifier(NAMESPACE_PREFIX + name)
        except FlotillaError as exc:
            raise ValueError(f"proxy_consumers: {name!r}: {exc.message}") from None
        if any(c.name == name for c in consumers):
            raise ValueError(f"proxy_consumers: {name!r} named twice")
        path = cfg.state / "proxy" / f"{name}.sock"
        if len(str(path).encode()) > _SUN_PATH:
            raise ValueError(f"proxy_consumers: {name!r}: {path} is longer than a UNIX socket's path may be")
        consumers.append(Consumer(name, NAMESPACE_PREFIX + name, path))
    snapshotters: dict[str, str] = {}
    for item in _items(cfg.proxy_snapshotters):
        theirs, _, ours = item.partition("=")
        if not theirs.strip() or ours.strip() not in SNAPSHOTTERS:
            raise ValueError(f"proxy_snapshotters: {item!r}: expected NAME=one of {', '.join(SNAPSHOTTERS)}")
        snapshotters[theirs.strip()] = ours.strip()
    return ProxySettings(tuple(consumers), snapshotters)


class _Context:
    """A call's context as the gateway's servicers see it: the consumer's namespace in place
    of any sent, and an abort of its own, so that a NotFound can still become an answer."""

    __slots__ = ("_real", "_metadata", "code", "details")

    def __init__(self, real: aio.ServicerContext, namespace: str) -> None:
        self._real = real
        kept = tuple((k, v) for k, v in real.invocation_metadata() or () if k not in _DROPPED)
        self._metadata = (*kept, (NAMESPACE_KEY, namespace))
        self.code = grpc.StatusCode.OK
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self._real.time_remaining()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> NoReturn:
        self.code, self.details = code, details
        raise aio.AbortError(details)


class ConsumerHandler(grpc.GenericRpcHandler):
    """Serves one consumer's socket with the gateway's own Content and Snapshots handlers;
    any other method is Unimplemented."""

    def __init__(self, lookup: Callable[[str], grpc.RpcMethodHandler], consumer: Consumer,
                 snapshotters: Mapping[str, str], adopt: Callable[[str, str], Awaitable[bool]]) -> None:
        self.lookup, self.consumer, self.snapshotters, self.adopt = lookup, consumer, snapshotters, adopt
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method not in _METHODS:
            return None
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._handlers[method] = self._wrap(method, self.lookup(method))
        return handler

    def _wrap(self, method: str, inner: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        ns = self.consumer.namespace
        decode = inner.request_deserializer
        if method.startswith(SNAPSHOTS) and decode is not None:
            decode = self._renaming(decode)
        if inner.unary_unary is not None:
            call = inner.unary_unary
            if method == CONTENT + "Info":
                return inner._replace(unary_unary=self._info(call), request_deserializer=decode)

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                mapped = _Context(context, ns)
                try:
                    return await call(request, mapped)
                except aio.AbortError:
                    await context.abort(mapped.code, mapped.details)
            return inner._replace(unary_unary=unary, request_deserializer=decode)
        kind = "unary_stream" if inner.unary_stream is not None else "stream_stream"
        stream = getattr(inner, kind)
        if stream is None:  # no client-streaming-only method in either API
            raise ValueError(f"{method}: unexpected call shape")

        async def streaming(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            mapped = _Context(context, ns)
            try:
                async for reply in stream(request, mapped):
                    yield reply
            except aio.AbortError:
                await context.abort(mapped.code, mapped.details)
        return inner._replace(**{kind: streaming}, request_deserializer=decode)

    def _renaming(self, decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        names = self.snapshotters

        def renamed(data: bytes) -> Any:
            request = decode(data)
            request.snapshotter = names.get(request.snapshotter, request.snapshotter)
            return request
        return renamed

    def _info(self, call: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, aio.ServicerContext], Awaitable[Any]]:
        ns = self.consumer.namespace

        async def info(request: Any, context: aio.ServicerContext) -> Any:
            mapped = _Context(context, ns)
            try:
                return await call(request, mapped)
            except aio.AbortError:
                if mapped.code != _NOT_FOUND or not await self.adopt(ns, request.digest):
                    await context.abort(mapped.code, mapped.details)
            mapped = _Context(context, ns)  # held now: the same servicer answers
            try:
                return await call(request, mapped)
            except aio.AbortError:
                await context.abort(mapped.code, mapped.details)
        return info


class Adopter:
    """Makes a consumer a holder of a blob another consumer stored: a shared writer's
    commit (the content service adds an ownership record, no bytes move)."""

    def __init__(self, content: ContentClient) -> None:
        self.content = content
        self._cleanups: set[asyncio.Task[None]] = set()

    async def __call__(self, namespace: str, digest: str) -> bool:
        if digest_error(digest):
            return False
        # a ref of our own per try: never one a consumer uses, and two tries never meet
        ref = f"{_ADOPT_REF}/{digest}/{uuid.uuid4().hex}"
        try:
            w = await self.content.writer(namespace, ref, 0, digest)
        except AlreadyExists:
            return True  # held already: written or adopted meanwhile
        except FlotillaError as exc:
            log.debug("adopting %s into %s: %s", digest, namespace, exc.message)
            return False
        if not w.session.shared:
            # stored nowhere: the answer stays NotFound at once; the empty ingest just
            # opened goes after it, off the pull's path
            task = asyncio.ensure_future(self._discard(w, namespace, ref))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
            return False
        try:
            await w.commit(0, digest)
        except AlreadyExists:
            pass
        except FlotillaError as exc:
            log.debug("adopting %s into %s: %s", digest, namespace, exc.message)
            return False
        finally:
            await w.close()
        return True

    async def _discard(self, w: Writer, namespace: str, ref: str) -> None:
        try:
            await w.close()
            await self.content.abort(namespace, ref)
        except FlotillaError as exc:  # its consumer's collector aborts what is left
            log.debug("adoption ingest %s in %s left: %s", ref, namespace, exc.message)

    async def drain(self, timeout: float) -> None:
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=timeout)


def server_for(lookup: Callable[[str], grpc.RpcMethodHandler], consumer: Consumer,
               snapshotters: Mapping[str, str], adopt: Adopter, max_message: int) -> h2grpc.Server:
    """The gRPC server of one consumer's socket."""
    server = h2grpc.Server(max_message=max_message)
    server.add_generic_rpc_handlers([ConsumerHandler(lookup, consumer, snapshotters, adopt), UnimplementedHandler()])
    return server


def gateway_lookup(gateway: h2grpc.Server) -> Callable[[str], grpc.RpcMethodHandler]:
    """The gateway's own handler of a method (its servicers are registered by name)."""
    class _Blank:
        def invocation_metadata(self) -> tuple[()]:
            return ()
    return lambda method: gateway.handler(method, _Blank())  # type: ignore[arg-type]


def adopter(bus: Bus, cfg: Config) -> Adopter:
    # never local: an adoption writes no bytes, so it needs no data file (nor the thread
    # that would write it), which made each try about 5 ms dearer here
    return Adopter(ContentClient(bus, cfg.prefix, timeout=cfg.request_timeout, local=False, host=cfg.host))
