"""Events: subscribe (containerd filter syntax) and publish; payloads decoded to dicts."""

from __future__ import annotations

import datetime as _dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory, struct_pb2  # noqa: F401
from grpc import aio

from flotilla._api.containerd.api.events import (container_pb2, content_pb2, image_pb2,  # noqa: F401
                                                 namespace_pb2, snapshot_pb2, task_pb2)
from flotilla._api.containerd.api.services.events.v1 import events_pb2 as pb
from flotilla._api.containerd.api.services.events.v1 import events_pb2_grpc as pb_grpc

from ._conn import Conn, rpc, translate
from .types import ts


@dataclass
class Event:
    topic: str
    namespace: str
    type_url: str
    payload: dict[str, Any] = field(default_factory=dict)
    timestamp: _dt.datetime | None = None


def decode(value: any_pb2.Any) -> dict[str, Any]:
    name = value.type_url.rsplit("/", 1)[-1]
    try:
        cls = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))
    except KeyError:
        return {}
    msg = cls()
    msg.ParseFromString(value.value)
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


class Events:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = pb_grpc.EventsStub(conn.channel)

    async def subscribe(self, *filters: str) -> AsyncIterator[Event]:
        """Events of every namespace matching any of ``filters`` (all if none), as they happen."""
        call = self._stub.Subscribe(pb.SubscribeRequest(filters=list(filters)), metadata=self._conn.metadata())
        try:
            async for env in call:
                yield Event(env.topic, env.namespace, env.event.type_url, decode(env.event), ts(env.timestamp))
        except aio.AioRpcError as exc:
            if exc.code().name == "CANCELLED":
                return
            raise translate(exc) from None
        finally:
            call.cancel()

    @rpc
    async def publish(self, topic: str, message: Any) -> None:
        """Publish a protobuf event ``message`` on ``topic`` in the client's namespace."""
        payload = any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())
        await self._stub.Publish(pb.PublishRequest(topic=topic, event=payload), metadata=self._conn.metadata())
