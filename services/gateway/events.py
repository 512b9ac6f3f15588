"""containerd.services.events.v1.Events over the bus: Publish, Forward, Subscribe."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from google.protobuf import descriptor_pool, empty_pb2, message_factory
from google.protobuf.message import DecodeError, Message
from grpc import aio

from flotilla.libs import filters
from flotilla.libs.bus import Bus
from flotilla.libs.errors import FlotillaError, InvalidArgument, Unknown
from flotilla.libs.events import Event
from flotilla.libs.identifiers import validate_identifier
from flotilla.libs.subjects import events as events_subject
from flotilla.libs.wire import from_wire

from . import pb
from .protomsg import fill, set_timestamp, timestamp_ns
from .rpc import namespace, streaming, unary

log = logging.getLogger("flotilla.gateway.events")
_QUEUE = 1024  # events held per slow subscriber before the oldest are dropped


def validate_topic(topic: str) -> None:
    if not topic:
        raise InvalidArgument("must not be empty: invalid argument")
    if topic[0] != "/":
        raise InvalidArgument("must start with '/': invalid argument")
    if len(topic) == 1:
        raise InvalidArgument("must have at least one component: invalid argument")
    for component in topic[1:].split("/"):
        try:
            validate_identifier(component)
        except InvalidArgument as exc:
            raise InvalidArgument(f'failed validation on component "{component}": {exc.message}') from None


@functools.lru_cache(maxsize=256)
def _message_class(type_url: str) -> type[Message] | None:
    name = type_url.rsplit("/", 1)[-1]
    try:
        return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))
    except KeyError:
        return None


def to_envelope(event: Event) -> pb.events.Envelope:
    env = pb.events.Envelope(namespace=event.namespace, topic=event.topic)
    set_timestamp(env.timestamp, event.timestamp_ns)
    value = event.value
    if not value and event.fields:
        cls = _message_class(event.type_url)
        value = fill(cls(), event.fields).SerializeToString() if cls else b""
    env.event.type_url, env.event.value = event.type_url, value
    return env


def _message_lookup(msg: Message | None, path: Sequence[str]) -> tuple[str, bool]:
    value: Any = msg
    for part in path:
        if isinstance(value, Message):
            if part not in value.DESCRIPTOR.fields_by_name:
                return "", False
            value = getattr(value, part)
        elif hasattr(value, "get"):  # a map field
            if part not in value:
                return "", False
            value = value[part]
        else:
            return "", False
    if isinstance(value, Message):
        return "", False
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text, text != ""


def envelope_lookup(env: pb.events.Envelope) -> filters.Lookup:
    decoded: list[Message | None] = []

    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        head = path[0]
        if head == "namespace":
            return env.namespace, bool(env.namespace)
        if head == "topic":
            return env.topic, bool(env.topic)
        if head == "event" and len(path) > 1:
            if not decoded:
                cls = _message_class(env.event.type_url)
                msg = None
                if cls is not None:
                    try:
                        msg = cls.FromString(env.event.value)
                    except DecodeError:
                        msg = None
                decoded.append(msg)
            return _message_lookup(decoded[0], path[1:])
        return "", False
    return lookup


class EventHub:
    """One bus subscription fanned out to every Subscribe stream of this gateway."""

    def __init__(self, bus: Bus, prefix: str, host: str) -> None:
        self.bus, self.prefix, self.host = bus, prefix, host
        self.queues: set[asyncio.Queue[pb.events.Envelope]] = set()
        self.watchers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}

    async def start(self) -> None:
        await self.bus.subscribe(events_subject(self.prefix), self._on_event)

    def watch(self, topic: str, callback: Callable[[dict[str, Any]], None]) -> None:
        """``callback(event)`` for every event of ``topic``, from this one subscription (every
        event reaches every gateway: a second subscription would decode each twice)."""
        self.watchers.setdefault(topic, []).append(callback)

    async def _on_event(self, data: dict[str, Any]) -> None:
        if isinstance(data, dict) and data.get("host", "") not in ("", self.host):
            return  # another host's task or snapshot: never this host's
        for callback in self.watchers.get(data.get("topic", ""), ()) if isinstance(data, dict) else ():
            callback(data)
        if not self.queues:
            return
        env = to_envelope(from_wire(Event, data))
        for queue in self.queues:
            if queue.full():
                queue.get_nowait()
                log.warning("event subscriber too slow; dropped an event")
            queue.put_nowait(env)

    async def publish(self, event: Event) -> None:
        await self.bus.publish(events_subject(self.prefix), event)


class EventsServicer(pb.events_grpc.EventsServicer):
    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    @unary("Events.Publish")
    async def Publish(self, request: pb.events.PublishRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        try:
            ns = namespace(context)
        except FlotillaError as exc:
            raise type(exc)(f"failed publishing event: {exc.message}") from None
        try:
            validate_topic(request.topic)
        except InvalidArgument as exc:
            raise InvalidArgument(f'envelope topic "{request.topic}": {exc.message}') from None
        await self.hub.publish(Event(topic=request.topic, namespace=ns, type_url=request.event.type_url,
                                     timestamp_ns=time.time_ns(), value=request.event.value))
        return empty_pb2.Empty()

    @unary("Events.Forward")
    async def Forward(self, request: pb.events.ForwardRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        env = request.envelope
        try:
            validate_identifier(env.namespace)
        except InvalidArgument as exc:
            raise InvalidArgument(f"event envelope has invalid namespace: {exc.message}") from None
        try:
            validate_topic(env.topic)
        except InvalidArgument as exc:
            raise InvalidArgument(f'envelope topic "{env.topic}": {exc.message}') from None
        if not env.HasField("timestamp") or (env.timestamp.seconds == 0 and env.timestamp.nanos == 0):
            raise InvalidArgument("timestamp must be set on forwarded event: invalid argument")
        await self.hub.publish(Event(topic=env.topic, namespace=env.namespace, type_url=env.event.type_url,
                                     timestamp_ns=timestamp_ns(env.timestamp), value=env.event.value))
        return empty_pb2.Empty()

    @streaming("Events.Subscribe")
    async def Subscribe(self, request: pb.events.SubscribeRequest, context: aio.ServicerContext) -> AsyncIterator[pb.events.Envelope]:
        try:
            wanted = filters.parse(request.filters)
        except FlotillaError as exc:  # containerd returns a plain error here: Unknown
            raise Unknown(f"subscription error: failed parsing subscription filters: {exc.message}") from None
        queue: asyncio.Queue[pb.events.Envelope] = asyncio.Queue(_QUEUE)
        self.hub.queues.add(queue)
        try:
            while True:
                env = await queue.get()
                if wanted.matches(envelope_lookup(env)):
                    yield env
        finally:
            self.hub.queues.discard(queue)
