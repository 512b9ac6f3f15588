"""Issue 25: the suite serves containerd's ttrpc endpoint at ``<socket>.ttrpc``; an event
forwarded there reaches gRPC subscribers as one forwarded over gRPC does."""

from __future__ import annotations

import asyncio
import os
import stat
import time
import uuid

import grpc
import pytest

from flotilla._api.containerd.api.events import namespace_pb2 as ev_namespace
from flotilla._api.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from flotilla.services.gateway import ttrpc
from flotilla.services.gateway.ttrpc import protocol as tp
from flotilla.testing import PrivateSuite


def _envelope(topic: str, namespace: str = "default", type_url: str = "", value: bytes = b"") -> events_pb2.Envelope:
    env = events_pb2.Envelope(namespace=namespace, topic=topic)
    env.timestamp.GetCurrentTime()
    env.event.type_url, env.event.value = type_url, value
    return env


def _forward(env: events_pb2.Envelope) -> bytes:
    return events_pb2.ForwardRequest(envelope=env).SerializeToString()


def test_endpoint_is_a_root_only_socket(suite: PrivateSuite) -> None:
    st = os.stat(suite.address + ".ttrpc")
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0


async def test_forwarded_event_reaches_grpc_subscribers(suite: PrivateSuite) -> None:
    topic = f"/flotilla/ttrpc/{uuid.uuid4().hex[:8]}"
    payload = ev_namespace.NamespaceCreate(name="fwd", labels={"via": "ttrpc"}).SerializeToString()
    env = _envelope(topic, "ttrpcns", "containerd.events.NamespaceCreate", payload)
    with grpc.insecure_channel(f"unix://{suite.address}") as channel:
        stream = events_pb2_grpc.EventsStub(channel).Subscribe(
            events_pb2.SubscribeRequest(filters=[f'topic=="{topic}"']), timeout=30)
        reader = asyncio.ensure_future(asyncio.to_thread(next, stream))
        try:
            async with await ttrpc.Client.connect(suite.address + ".ttrpc") as client:
                deadline = time.monotonic() + 20
                # the subscription is live once one of the forwarded copies shows up
                while not reader.done() and time.monotonic() < deadline:
                    assert await client.call(ttrpc.EVENTS_SERVICE, "Forward", _forward(env), timeout=10) == b""
                    await asyncio.wait({reader}, timeout=0.2)
            got = await asyncio.wait_for(reader, 10)
        finally:
            stream.cancel()
    assert (got.namespace, got.topic, got.timestamp, got.event) == (env.namespace, env.topic, env.timestamp, env.event)
    assert ev_namespace.NamespaceCreate.FromString(got.event.value).labels["via"] == "ttrpc"


async def test_reconnect_then_forward_as_containerds_client_does(suite: PrivateSuite) -> None:
    # TestClientTTRPC_Reconnect's call: namespace default, topic /test, an empty Any
    first = await ttrpc.Client.connect(suite.address + ".ttrpc")
    await first.close()
    async with await ttrpc.Client.connect(suite.address + ".ttrpc") as client:
        assert await client.call(ttrpc.EVENTS_SERVICE, "Forward", _forward(_envelope("/test"))) == b""


@pytest.mark.parametrize("env", [
    events_pb2.Envelope(namespace="default", topic="/test"),      # no timestamp
    _envelope("no-slash"),
    _envelope("/test", namespace="bad name"),
])
async def test_refusals_match_the_grpc_forward(suite: PrivateSuite, env: events_pb2.Envelope) -> None:
    with grpc.insecure_channel(f"unix://{suite.address}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            events_pb2_grpc.EventsStub(channel).Forward(events_pb2.ForwardRequest(envelope=env), timeout=10)
    async with await ttrpc.Client.connect(suite.address + ".ttrpc") as client:
        resp = await client.send(tp.Request(ttrpc.EVENTS_SERVICE, "Forward", _forward(env)))
    assert (resp.status.code, resp.status.message) == (info.value.code().value[0], info.value.details())


async def test_unknown_services_and_methods_are_unimplemented(suite: PrivateSuite) -> None:
    async with await ttrpc.Client.connect(suite.address + ".ttrpc") as client:
        unknown_service = await client.send(tp.Request("containerd.task.v2.Task", "State"))
        unknown_method = await client.send(tp.Request(ttrpc.EVENTS_SERVICE, "Subscribe"))
    assert unknown_service.status == tp.Status(12, "service containerd.task.v2.Task")
    assert unknown_method.status == tp.Status(12, "method Subscribe")
