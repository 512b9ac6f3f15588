"""Encoded lists (libs/api/listed.py): what the store answers is containerd's list answer of
its records as they are after every kind of write, filtered, paged, scoped to a host, and
for records written before the encodings were kept. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pbc
from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla.libs.wire import to_wire
from flotilla.services.gateway.containers import wire_to_pb as container_pb
from flotilla.services.gateway.images import wire_to_pb as image_pb
from flotilla.services.metadata import db
from flotilla.services.metadata.api import AnyValue, Container, Descriptor, Image, Runtime
from flotilla.services.metadata.store import MetadataStore

SPEC = AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b'{"ociVersion":"1.0.2"}' * 20)


def _images(store: MetadataStore, fs: list[str] | None = None, budget: int = 0) -> list[Any]:
    """The encoded list, page by page, parsed."""
    out, after = b"", ""
    while True:
        page, after = store.list_images_page("ns", fs, after, budget, encoded=True)
        out += b"".join(page)
        if not after:
            return list(pbi.ListImagesResponse.FromString(out).images)


def _containers(store: MetadataStore, fs: list[str] | None = None, budget: int = 0, host: str = "") -> list[Any]:
    out, after = b"", ""
    while True:
        page, after = store.list_containers_page("ns", fs, after, budget, host, encoded=True)
        out += b"".join(page)
        if not after:
            return list(pbc.ListContainersResponse.FromString(out).containers)


def _image_msgs(store: MetadataStore, fs: list[str] | None = None) -> list[Any]:
    return [image_pb(to_wire(i)) for i in store.list_images("ns", fs)]


def _container_msgs(store: MetadataStore, fs: list[str] | None = None, host: str = "") -> list[Any]:
    return [container_pb(to_wire(c)) for c in store.list_containers("ns", fs, host)]


def _fill(store: MetadataStore) -> None:
    for i in range(30):
        store.create_image("ns", Image(f"img-{i:02d}", {"parity": "even" if i % 2 == 0 else "odd", "drop": ""},
                                       Descriptor("application/vnd.oci.image.manifest.v1+json",
                                                  "sha256:" + f"{i:064x}", 100 + i, {"a": str(i)})))
        store.create_container("ns", Container(f"c-{i:02d}", {"parity": "even" if i % 2 == 0 else "odd"},
                                               f"img-{i:02d}", Runtime("io.containerd.runc.v2"),
                                               SPEC if i % 3 else AnyValue(SPEC.type_url, b""), "overlayfs", f"c-{i:02d}",
                                               extensions={"e": AnyValue("t", b"\x01")} if i % 5 == 0 else {}))


def test_encoded_lists_are_the_records_after_every_kind_of_write(store: MetadataStore) -> None:
    _fill(store)
    store.update_image("ns", Image("img-03", {"new": "label"}), ["labels"])
    store.update_image("ns", Image("img-04", target=Descriptor("m", "sha256:" + "f" * 64, 9)), ["target"])
    store.update_image("ns", Image("img-05", {"parity": "x"}, Descriptor("m", "sha256:" + "e" * 64, 5)), [])  # whole
    store.update_container("ns", Container("c-06", {"k": "v"}), ["labels"])
    store.update_container("ns", Container("c-07", spec=AnyValue("t", b"other")), ["spec"])
    store.update_container("ns", Container("c-08", extensions={"x": AnyValue("u", b"")}), ["extensions"])
    store.delete_image("ns", "img-09")
    store.delete_container("ns", "c-09")
    assert _images(store) == _image_msgs(store) and len(_images(store)) == 29
    assert _containers(store) == _container_msgs(store) and len(_containers(store)) == 29
    _assert_all_encoded(store)  # kept at each write, not made at each list


def _assert_all_encoded(store: MetadataStore) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(db.images.select().where(db.images.c.listed.is_(None))).first() is None
        assert conn.execute(db.containers.select().where(db.containers.c.listed.is_(None))).first() is None


def test_encoded_lists_filter_and_page_as_the_plain_ones(store: MetadataStore) -> None:
    _fill(store)
    for fs in (["labels.parity==even"], ["name~=img-1", "labels.parity==odd"], ["target.digest==nothing"]):
        assert _images(store, fs) == _image_msgs(store, fs)
        assert _images(store, fs, budget=500) == _image_msgs(store, fs)
    assert len(_images(store, ["labels.parity==even"])) == 15
    assert _images(store, budget=500) == _image_msgs(store)  # many pages of a few records
    assert _containers(store, ["labels.parity==odd"], budget=700) == _container_msgs(store, ["labels.parity==odd"])
    assert _containers(store, budget=700) == _container_msgs(store)


def test_an_encoded_list_holds_only_its_hosts_containers(db_url: str) -> None:
    store = MetadataStore.open(db_url, host="a")
    try:
        store.create_container("ns", Container("mine", runtime=Runtime("r"), spec=SPEC))
        store.create_container("ns", Container("theirs", runtime=Runtime("r"), spec=SPEC), host="b")
        assert [c.id for c in _containers(store)] == ["mine"]
        assert [c.id for c in _containers(store, host="b")] == ["theirs"]
    finally:
        store.engine.dispose()


def test_records_written_without_their_encoding_are_listed_and_then_encoded(db_url: str) -> None:
    store = MetadataStore.open(db_url)
    try:
        _fill(store)
        want_images, want_containers = _image_msgs(store), _container_msgs(store)
        with store.engine.begin() as conn:  # as an older version writes them
            conn.execute(update(db.images).values(listed=None))
            conn.execute(update(db.containers).where(db.containers.c.id < "c-10").values(listed=None))
        assert _images(store) == want_images and _containers(store) == want_containers
        with store.engine.begin() as conn:  # as a database of before the column
            conn.exec_driver_sql("ALTER TABLE images DROP COLUMN listed")
            conn.exec_driver_sql("ALTER TABLE containers DROP COLUMN listed")
    finally:
        store.engine.dispose()
    again = MetadataStore.open(db_url)  # adds the column and encodes every record
    try:
        _assert_all_encoded(again)
        assert _images(again) == want_images and _containers(again) == want_containers
    finally:
        again.engine.dispose()
