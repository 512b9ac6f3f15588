"""A farm of hosts on one metadata database: containers are their host's, a database of
before hosts is migrated on open, and (PostgreSQL) one collection runs at a time across the
farm while every host's writes wait for it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from sqlalchemy import BigInteger, Column, LargeBinary, MetaData, String, Table, Text, create_engine, insert

from flotilla.libs.api.metadata import Descriptor, Image
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, NotFound
from flotilla.services.metadata.api import (AnyValue, Container, Lease, MetadataClient, Namespace, Resource,
                                           Runtime)
from flotilla.services.metadata.collector import Collector
from flotilla.services.metadata.gcmark import Blob, Snap, mark
from flotilla.services.metadata.server import MetadataServer
from flotilla.services.metadata.store import MetadataStore

from flotilla.testing.postgres import PostgresServer

SPEC = AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")
WAIT = 0.3  # long enough for a lock that should block to show it does


def _c(id: str, **kw: object) -> Container:
    return Container(id=id, runtime=Runtime("io.containerd.runc.v2"), spec=SPEC, **kw)  # type: ignore[arg-type]


def d(c: str) -> str:
    return "sha256:" + c * 64


# -- containers are host-local -------------------------------------------------------------

def test_the_same_container_id_on_two_hosts(store: MetadataStore) -> None:
    store.create_container("default", _c("build", image="a:1"), host="a")
    store.create_container("default", _c("build", image="b:1"), host="b")
    store.create_container("default", _c("only-b"), host="b")
    with pytest.raises(AlreadyExists):
        store.create_container("default", _c("build"), host="a")
    assert [c.id for c in store.list_containers("default", host="a")] == ["build"]
    assert [c.id for c in store.list_containers("default", host="b")] == ["build", "only-b"]
    assert [c["id"] for c in store.list_containers_page("default", host="b")[0]] == ["build", "only-b"]
    assert store.list_containers("default") == []  # the store's own host ("") has none
    assert store.get_container("default", "build", "a").image == "a:1"
    assert store.get_container("default", "build", "b").image == "b:1"
    with pytest.raises(NotFound):
        store.get_container("default", "only-b", "a")
    store.update_container("default", Container("build", image="a:2"), ["image"], "a")
    assert store.get_container("default", "build", "b").image == "b:1"
    with pytest.raises(NotFound):
        store.update_container("default", Container("only-b", image="x"), ["image"], "a")
    with pytest.raises(NotFound):
        store.delete_container("default", "only-b", "a")
    store.delete_container("default", "build", "a")
    with pytest.raises(NotFound):
        store.get_container("default", "build", "a")
    assert store.get_container("default", "build", "b").image == "b:1"


def test_no_host_means_the_store_host(db_url: str) -> None:
    store = MetadataStore.open(db_url, "h1")
    try:
        store.create_container("ns", _c("c1"))
        assert store.get_container("ns", "c1", "h1").id == "c1"
        assert store.list_containers("ns", host="h2") == []
        store.create_container("ns", _c("c1"), host="h2")
        store.delete_container("ns", "c1")
        assert [c.id for c in store.list_containers("ns", host="h2")] == ["c1"]
    finally:
        store.close()


def test_namespace_delete_is_refused_while_any_host_has_a_container(store: MetadataStore) -> None:
    store.create_container("ns", _c("c1"), host="elsewhere")
    with pytest.raises(FailedPrecondition, match="still has containers"):
        store.delete_namespace("ns")
    store.delete_container("ns", "c1", "elsewhere")
    store.delete_namespace("ns")


def test_gc_marks_this_hosts_container_snapshots_and_every_hosts_content(store: MetadataStore) -> None:
    for host, key, blob in (("a", "snap-a", "1"), ("b", "snap-b", "2")):
        store.create_container("ns", _c("c", snapshotter="overlayfs", snapshot_key=key,
                                        labels={"containerd.io/gc.ref.content": d(blob),
                                                "containerd.io/gc.ref.snapshot.overlayfs": key + "-ref"}),
                               host=host)
    store.create_lease("ns", Lease("l"))  # leases are the farm's: what one names is kept everywhere
    store.add_lease_resource("ns", "l", Resource("leased", "snapshots/overlayfs"))
    blobs = [Blob(d(c)) for c in "123"]
    snaps = [Snap("overlayfs", n) for n in ("snap-a", "snap-a-ref", "snap-b", "snap-b-ref", "leased")]
    content, snapshots = mark(store.gc_records("ns", host="a"), blobs, snaps)
    assert content == {d("1"), d("2")}
    assert snapshots == {"overlayfs/snap-a", "overlayfs/snap-a-ref", "overlayfs/leased"}
    content, snapshots = mark(store.gc_records("ns", host="b"), blobs, snaps)
    assert content == {d("1"), d("2")}
    assert snapshots == {"overlayfs/snap-b", "overlayfs/snap-b-ref", "overlayfs/leased"}


async def test_clients_address_their_own_hosts_containers(bus: Bus, tmp_path: Path) -> None:
    cfg = Config(root=tmp_path, prefix="md" + uuid.uuid4().hex[:8], host_id="h")
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'meta.db'}", cfg.host)
    server = MetadataServer(bus, cfg, store)
    await server.start()
    try:
        here, there = MetadataClient(bus, cfg.prefix), MetadataClient(bus, cfg.prefix, "other")
        await here.create_container("ns", _c("build", image="here"))
        await there.create_container("ns", _c("build", image="there"))
        assert [c.image for c in await there.list_containers("ns")] == ["there"]
        assert [c.image for c in await here.list_containers("ns")] == ["here"]
        await there.update_container("ns", Container("build", labels={"k": "v"}), ["labels.k"])
        assert (await here.get_container("ns", "build")).labels == {}
        await there.delete_container("ns", "build")
        with pytest.raises(NotFound):
            await there.get_container("ns", "build")
        assert (await here.get_container("ns", "build")).image == "here"
        assert store.get_container("ns", "build", "h").image == "here"  # "" was the server's host
    finally:
        await server.stop()
        store.close()


# -- a database of before hosts ------------------------------------------------------------

def _old_containers(meta: MetaData) -> Table:
    """The containers table as it was before hosts (primary key namespace, id)."""
    return Table(
        "containers", meta,
        Column("namespace", String(80), primary_key=True),
        Column("id", String(80), primary_key=True),
        Column("labels", Text, nullable=False, default="{}"),
        Column("image", Text, nullable=False, default=""),
        Column("runtime_name", Text, nullable=False, default=""),
        Column("runtime_options", LargeBinary, nullable=True),
        Column("spec", LargeBinary, nullable=True),
        Column("snapshotter", Text, nullable=False, default=""),
        Column("snapshot_key", Text, nullable=False, default=""),
        Column("extensions", LargeBinary, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
    )


def test_a_database_of_before_hosts_keeps_its_containers(db_url: str) -> None:
    meta = MetaData()
    old = _old_containers(meta)
    namespaces = Table("namespaces", meta, Column("name", String(80), primary_key=True))
    engine = create_engine(db_url)
    meta.create_all(engine)
    pack = msgpack.packb
    with engine.begin() as conn:
        for ns, id in (("default", "web"), ("builds", "ci")):
            conn.execute(insert(namespaces).values(name=ns))
            conn.execute(insert(old).values(
                namespace=ns, id=id, labels='{"a":"1"}', image="img:1", runtime_name="io.containerd.runc.v2",
                runtime_options=None, spec=pack([SPEC.type_url, SPEC.value]), snapshotter="overlayfs",
                snapshot_key=id, extensions=pack({"x": ["t", b"\x01"]}), created_at=1, updated_at=2))
    engine.dispose()

    for _ in range(2):  # a second open finds nothing to do
        store = MetadataStore.open(db_url, "old-host")
        try:
            web = store.get_container("default", "web")
            assert (web.labels, web.image, web.snapshot_key, web.spec, web.created_at, web.updated_at) == (
                {"a": "1"}, "img:1", "web", SPEC, 1, 2)
            assert web.extensions == {"x": AnyValue("t", b"\x01")}
            assert store.get_container("builds", "ci", "old-host").id == "ci"
            with pytest.raises(NotFound):
                store.get_container("default", "web", "new-host")
            assert store.check_integrity() == []
        finally:
            store.close()
    store = MetadataStore.open(db_url, "new-host")
    try:
        store.create_container("default", _c("web"))  # the new primary key: (namespace, host, id)
        assert store.get_container("default", "web", "old-host").image == "img:1"
        assert store.get_container("default", "web").image == ""
        assert [c.id for c in store.list_containers("builds", host="old-host")] == ["ci"]
    finally:
        store.close()


# -- one collection at a time, writes wait for it (PostgreSQL) -----------------------------

@pytest.fixture
def two_hosts(postgres: PostgresServer) -> Iterator[tuple[MetadataStore, MetadataStore]]:
    url = postgres.new_database()
    a, b = MetadataStore.open(url, "a"), MetadataStore.open(url, "b")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as p:
        yield p


def _blocked(fut: concurrent.futures.Future[object]) -> bool:
    try:
        fut.result(timeout=WAIT)
    except concurrent.futures.TimeoutError:
        return True
    return False


def test_writes_on_every_host_wait_for_a_collection(two_hosts: tuple[MetadataStore, MetadataStore],
                                                     pool: concurrent.futures.ThreadPoolExecutor) -> None:
    a, b = two_hosts
    a.create_lease("ns", Lease("old"))
    held = a.gc_acquire()
    try:
        write = pool.submit(b.create_container, "ns", _c("c1"))
        namespace = pool.submit(b.update_namespace, Namespace("ns", {"k": "v"}), [])
        assert _blocked(write) and _blocked(namespace)
        # the collection's own writes go through its lock's session: they do not wait for it
        pool.submit(a.remove_leases, "ns", ["old"], held).result(timeout=5)
        assert not write.done()
    finally:
        a.gc_release(held)
    write.result(timeout=5)
    namespace.result(timeout=5)
    assert b.get_container("ns", "c1").id == "c1" and a.list_leases("ns") == []


def test_one_collection_at_a_time_and_it_waits_for_writes_in_progress(
        two_hosts: tuple[MetadataStore, MetadataStore], pool: concurrent.futures.ThreadPoolExecutor) -> None:
    a, b = two_hosts
    held = a.gc_acquire()
    second = pool.submit(b.gc_acquire)
    try:
        assert _blocked(second)
    finally:
        a.gc_release(held)
    b.gc_release(second.result(timeout=5))  # type: ignore[arg-type]

    with b._write():  # a write in progress on host b
        collection = pool.submit(a.gc_acquire)
        assert _blocked(collection)
    a.gc_release(collection.result(timeout=5))  # type: ignore[arg-type]


async def test_a_collector_waits_for_another_hosts_collection(
        bus: Bus, tmp_path: Path, two_hosts: tuple[MetadataStore, MetadataStore]) -> None:
    a, b = two_hosts
    b.create_lease("ns", Lease("old", {"containerd.io/gc.expire": "2000-01-01T00:00:00Z"}))
    cfg = Config(root=tmp_path, prefix="md" + uuid.uuid4().hex[:8], host_id="b")
    collector = Collector(bus, cfg, b)
    held = await asyncio.to_thread(a.gc_acquire)
    try:
        run = asyncio.create_task(collector.collect())
        await asyncio.sleep(1.0)  # its pings of absent stores answer at once (no responders)
        assert not run.done()
    finally:
        await asyncio.to_thread(a.gc_release, held)
    stats = await asyncio.wait_for(run, 10)
    # it removed the expired lease while holding the lock, without waiting for itself
    assert stats.leases_expired == 1 and b.list_leases("ns") == []


def test_a_proxy_consumers_namespace_takes_no_record(tmp_path: Path) -> None:
    """docs/integrators.md: our collector must never judge a consumer's blobs."""
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'meta.db'}", "h1")
    with pytest.raises(FailedPrecondition, match="consumer"):
        store.create_namespace(Namespace("proxy.a"))
    with pytest.raises(FailedPrecondition, match="consumer"):
        store.create_image("proxy.a", Image("x", target=Descriptor("application/json", "sha256:" + "0" * 64, 1)))
    store.create_namespace(Namespace("proxyish"))  # only the prefix is the consumers'
