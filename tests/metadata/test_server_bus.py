"""The metadata service's NATS binding on a real nats-server: the typed client, paging of
big lists, events, GC when no content or snapshots service is deployed, malformed requests
and replayed creates and deletes."""

from __future__ import annotations

import asyncio
import time
import copy
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import flotilla.libs.api.metadata as contract
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import AlreadyExists, InvalidArgument, NotFound
from flotilla.libs.subjects import events as events_subject
from flotilla.services.metadata.api import AnyValue, Container, Descriptor, Image, Lease, MetadataClient, Runtime
from flotilla.services.metadata import server as server_module
from flotilla.services.metadata.server import MetadataServer
from flotilla.services.metadata.store import MetadataStore


@pytest.fixture
async def server(bus: Bus, tmp_path: Path) -> AsyncIterator[MetadataServer]:
    cfg = Config(root=tmp_path, prefix="md" + uuid.uuid4().hex[:8], host_id="h")
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'meta.db'}")
    server = MetadataServer(bus, cfg, store)
    await server.start()
    yield server
    await server.gc.stop()
    store.engine.dispose()


@pytest.fixture
def client(bus: Bus, server: MetadataServer) -> MetadataClient:
    return MetadataClient(bus, server.cfg.prefix)


async def test_containers_round_trip_and_page(client: MetadataClient, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(40):
        await client.create_container("ns", Container(f"c{i:02d}", labels={"i": str(i)}, runtime=Runtime("r"),
                                                      spec=AnyValue("t", b"x" * 100)))
    monkeypatch.setattr(contract, "PAGE_BUDGET", 1000)  # many pages
    listed = await client.list_containers("ns")
    assert [c.id for c in listed] == [f"c{i:02d}" for i in range(40)]
    assert listed[3].spec == AnyValue("t", b"x" * 100)
    assert [c.id for c in await client.list_containers("ns", ["labels.i==7"])] == ["c07"]
    with pytest.raises(InvalidArgument):
        await client.list_containers("ns", ["labels.i=="])
    got = await client.get_container("ns", "c05")
    assert got.labels == {"i": "5"}
    up = await client.update_container("ns", Container("c05", labels={"j": "1"}), ["labels.j"])
    assert up.labels == {"i": "5", "j": "1"}
    await client.delete_container("ns", "c05")
    with pytest.raises(NotFound, match='container "c05" in namespace "ns": not found'):
        await client.get_container("ns", "c05")


async def test_image_events_and_gc_without_stores(client: MetadataClient, bus: Bus) -> None:
    seen: list[dict[str, object]] = []
    await bus.subscribe(events_subject(client.prefix), lambda e: asyncio.sleep(0, seen.append(e)))
    await client.create_image("ns", Image("a:1", {"k": "v"}, Descriptor("m", "sha256:" + "a" * 64, 1)))
    await client.create_lease("ns", Lease("old", {"containerd.io/gc.expire": "2000-01-01T00:00:00Z"}))
    await client.delete_image("ns", "a:1", sync=True)
    stats = await client.collect_garbage()
    assert stats.skipped == ["content", "snapshots"]  # not deployed: skipped, not an error
    assert await client.list_leases("ns") == []        # the expired lease went in the first run
    for _ in range(100):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.02)
    assert [(e["topic"], e["type_url"]) for e in seen] == [
        ("/images/create", "containerd.services.images.v1.ImageCreate"),
        ("/images/delete", "containerd.services.images.v1.ImageDelete")]
    assert seen[0]["fields"] == {"name": "a:1", "labels": {"k": "v"}}


async def test_lease_delete_does_not_wait_for_an_absent_content_service(client: MetadataClient) -> None:
    """The content service keeps lease ids on blobs and is told of a deleted lease after the
    delete answers; with none deployed the delete answers at once all the same (the release
    keeps asking, in the background, within its own deadline: one may be restarting)."""
    await client.create_lease("ns", Lease("l1"))
    started = time.monotonic()
    await client.delete_lease("ns", "l1")
    assert time.monotonic() - started < 1.0
    assert await client.list_leases("ns") == []
    with pytest.raises(NotFound):
        await client.delete_lease("ns", "l1")


async def test_lease_delete_answers_before_the_content_release_and_a_new_lease_of_its_id_waits(
        bus: Bus, tmp_path: Path) -> None:
    """The content service forgets a deleted lease's id after the delete answers. A lease
    created again under that id waits for that, so the late release cannot strip the id from
    blobs written under the new lease (they would lose their only GC root)."""
    import threading

    from flotilla.libs.api.content import ContentClient
    from flotilla.services.content.server import ContentServer
    from flotilla.services.content.store import ContentStore

    cfg = Config(root=tmp_path, prefix="md" + uuid.uuid4().hex[:8], host_id="h")
    blobs = ContentStore(tmp_path / "content")
    release, gate = blobs.release_lease, threading.Event()
    blobs.release_lease = lambda ns, lease: (gate.wait(10), release(ns, lease))[1]  # type: ignore[method-assign]
    content_server = ContentServer(bus, cfg, blobs)
    await content_server.start()
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'meta.db'}")
    server = MetadataServer(bus, cfg, store)
    await server.start()
    client, content = MetadataClient(bus, cfg.prefix), ContentClient(bus, cfg.prefix)
    try:
        await client.create_lease("ns", Lease("l1"))
        old = await content.write_blob("ns", "old", b"held by the first l1", lease="l1")
        await client.delete_lease("ns", "l1")  # answers while the release waits at the gate
        assert (await content.info("ns", old)).leases == ["l1"]
        again = asyncio.create_task(client.create_lease("ns", Lease("l1")))
        await asyncio.sleep(0.2)
        assert not again.done()
        gate.set()
        await again
        new = await content.write_blob("ns", "new", b"held by the second l1", lease="l1")
        assert (await content.info("ns", old)).leases == []
        assert (await content.info("ns", new)).leases == ["l1"]
    finally:
        gate.set()
        await server.stop()
        await content_server.stop()
        store.engine.dispose()


@pytest.mark.parametrize("route, request_map", [
    (contract.CONTAINER_CREATE, {"namespace": "ns"}),                                # no container
    (contract.CONTAINER_CREATE, {"namespace": "ns", "container": {"id": 5}}),        # id not a str
    (contract.IMAGE_CREATE, {"namespace": "ns", "image": {"name": "a", "labels": ["x"]}}),
    (contract.NAMESPACE_CREATE, {"namespace": "ns"}),                                # not a map
    (contract.LEASE_CREATE, {"namespace": 1, "lease": {"id": "l"}}),
    (contract.CONTAINER_DELETE, "ns/c1"),                                           # not a map
])
async def test_malformed_request_is_invalid_and_touches_no_store(
        client: MetadataClient, bus: Bus, route: contract.Route[object, object], request_map: object) -> None:
    with pytest.raises(InvalidArgument):
        await bus.request(contract.subject(client.prefix, route), request_map, timeout=5)
    assert await client.list_namespaces() == []
    assert await client.list_containers("ns") == []
    assert await client.list_images("ns") == []
    assert await client.list_leases("ns") == []


async def test_replayed_create_finds_its_record_and_replayed_delete_finds_nothing(
        server: MetadataServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call run again after its instance died may find its work done: not an error."""
    async def absent() -> bool:  # no content or snapshots service: say so without asking
        return False
    monkeypatch.setattr(server.gc, "content_up", absent)
    monkeypatch.setattr(server.gc, "snapshots_up", absent)
    c = contract.ContainerCreate("ns", Container("c1", runtime=Runtime("r"), spec=AnyValue("t", b"s")))
    i = contract.ImageCreate("ns", Image("a:1", target=Descriptor("m", "sha256:" + "a" * 64, 1)))
    lease = contract.LeaseCreate("ns", Lease("l1", {"k": "v"}))
    ns = contract.NamespaceCreate(contract.Namespace("other", {"k": "v"}))
    # copies: the store stamps the request's record, and each create below stamps it again
    made = copy.deepcopy([await server.c_create(c), await server.i_create(i), await server.l_create(lease),
                          await server.ns_create(ns)])
    creates = [(server.c_create, c), (server.i_create, i), (server.l_create, lease), (server.ns_create, ns)]
    for handler, req in creates:
        with pytest.raises(AlreadyExists):  # a first run: a real conflict
            await handler(req)  # type: ignore[operator]
    deletes = [(server.c_delete, contract.ContainerRef("ns", "c1")),
               (server.i_delete, contract.ImageDelete("ns", "a:1")),
               (server.l_delete, contract.LeaseDelete("ns", "l1")),
               (server.ns_delete, contract.NamespaceName("other"))]

    monkeypatch.setattr(server_module, "replaying", lambda: True)
    again = [await handler(req) for handler, req in creates]  # type: ignore[operator]
    assert again == made
    for handler, req in deletes:
        assert await handler(req) is None  # type: ignore[operator]
        assert await handler(req) is None  # type: ignore[operator]  # gone already: success
    assert server.store.list_namespaces() == [contract.Namespace("ns")]
    monkeypatch.setattr(server_module, "replaying", lambda: False)
    for handler, req in deletes:
        with pytest.raises(NotFound):
            await handler(req)  # type: ignore[operator]
