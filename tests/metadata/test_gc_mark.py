"""GC's mark phase over the store's real records (SQLite and PostgreSQL).

Content and snapshots here are given as lists; the sweep through the real content
service is shown in tests/integration/test_metadata.py."""

from __future__ import annotations

from flotilla.services.metadata.api import AnyValue, Container, Descriptor, Image, Lease, Resource, Runtime
from flotilla.services.metadata.gcmark import Blob, Snap, mark, removal_order
from flotilla.services.metadata.store import MetadataStore

MT = "application/vnd.oci.image.manifest.v1+json"


def d(c: str) -> str:
    return "sha256:" + c * 64


def test_images_follow_content_and_snapshot_labels(store: MetadataStore) -> None:
    store.create_image("ns", Image("img", target=Descriptor(MT, d("1"), 10)))
    blobs = [
        Blob(d("1"), {"containerd.io/gc.ref.content.config": d("2"), "containerd.io/gc.ref.content.l.0": d("3")}),
        Blob(d("2"), {"containerd.io/gc.ref.snapshot.overlayfs": "chain-top"}),
        Blob(d("3")),
        Blob(d("4")),                                        # nobody's
        Blob(d("5"), {"containerd.io/gc.root": "x"}),         # a root by label
        Blob(d("6"), {"containerd.io/gc.ref.contentX": d("4")}),  # not a reference label
    ]
    snaps = [Snap("overlayfs", "chain-bottom"), Snap("overlayfs", "chain-top", "chain-bottom"),
             Snap("overlayfs", "orphan"), Snap("overlayfs", "orphan-child", "orphan"),
             Snap("native", "chain-top")]
    content, snapshots = mark(store.gc_records("ns"), blobs, snaps)
    assert content == {d("1"), d("2"), d("3"), d("5")}
    assert snapshots == {"overlayfs/chain-top", "overlayfs/chain-bottom"}
    assert [s.key for s in removal_order(snaps, snapshots)] == [
        "overlayfs/orphan-child", "overlayfs/orphan", "native/chain-top"]
    # namespaces do not see each other's roots
    assert mark(store.gc_records("other"), blobs, snaps)[0] == {d("5")}


def test_containers_hold_their_snapshot(store: MetadataStore) -> None:
    store.create_container("ns", Container("c", runtime=Runtime("r"), spec=AnyValue("t", b""),
                                           snapshotter="overlayfs", snapshot_key="c-rw",
                                           labels={"containerd.io/gc.ref.content.x": d("7")}))
    snaps = [Snap("overlayfs", "base"), Snap("overlayfs", "c-rw", "base")]
    content, snapshots = mark(store.gc_records("ns"), [Blob(d("7")), Blob(d("8"))], snaps)
    assert content == {d("7")} and snapshots == {"overlayfs/c-rw", "overlayfs/base"}


def test_leases_hold_resources_and_writes_until_they_expire(store: MetadataStore) -> None:
    store.create_lease("ns", Lease("live"))
    store.create_lease("ns", Lease("old", {"containerd.io/gc.expire": "2001-01-01T00:00:00Z"}))
    store.create_lease("ns", Lease("bad-expiry", {"containerd.io/gc.expire": "tomorrow"}))
    store.create_lease("ns", Lease("flat", {"containerd.io/gc.flat": "1"}))
    store.add_lease_resource("ns", "live", Resource(d("1"), "content"))
    store.add_lease_resource("ns", "old", Resource(d("2"), "content"))
    store.add_lease_resource("ns", "flat", Resource(d("3"), "content"))
    store.add_lease_resource("ns", "live", Resource("s1", "snapshots/overlayfs"))
    records = store.gc_records("ns")
    assert {x.id for x in records.leases if x.expired} == {"old"}
    blobs = [Blob(d("1"), {"containerd.io/gc.ref.content": d("9")}), Blob(d("2")),
             Blob(d("3"), {"containerd.io/gc.ref.content": d("a")}),
             Blob(d("4"), leases=["bad-expiry"]), Blob(d("5"), leases=["old", "gone"]), Blob(d("9")), Blob(d("a"))]
    content, snapshots = mark(records, blobs, [Snap("overlayfs", "s1"), Snap("overlayfs", "s2", leases=["live"])])
    # flat: d3 kept but its reference d(a) not followed; an invalid expiry keeps the lease
    assert content == {d("1"), d("9"), d("3"), d("4")}
    assert snapshots == {"overlayfs/s1", "overlayfs/s2"}
    store.remove_leases("ns", ["old"])
    assert sorted(x.id for x in store.list_leases("ns")) == ["bad-expiry", "flat", "live"]


def test_a_collection_holds_the_writes_of_every_instance_on_the_store(db_url: str) -> None:
    """Two instances on one store (two metadata processes of a host on its SQLite file, or
    two hosts on PostgreSQL): while one collects, the other's writes wait for its end, so
    nothing it did not see (an image made, then its pull's lease dropped) is swept."""
    import threading
    import time

    collector, writer = MetadataStore.open(db_url), MetadataStore.open(db_url)
    try:
        held = collector.gc_acquire()
        done = threading.Event()

        def write() -> None:
            writer.create_image("gc-gate", Image("app:v1", {}, Descriptor(MT, d("a"), 10)))
            done.set()
        thread = threading.Thread(target=write)
        thread.start()
        try:
            assert not done.wait(0.5)  # held while the collection runs
        finally:
            released = time.monotonic()
            collector.gc_release(held)
        thread.join(10)
        assert done.is_set() and time.monotonic() - released < 5
        assert [i.name for i in writer.list_images("gc-gate")] == ["app:v1"]
        # the collection's own writes do not wait for its own hold
        held = collector.gc_acquire()
        try:
            collector.remove_leases("gc-gate", [], held)
        finally:
            collector.gc_release(held)
    finally:
        collector.engine.dispose()
        writer.engine.dispose()
