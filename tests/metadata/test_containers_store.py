"""Container records: containerd's validation, field masks, filters and messages."""

from __future__ import annotations

import pytest

from flotilla.libs.errors import AlreadyExists, InvalidArgument, NotFound
from flotilla.services.metadata.api import AnyValue, Container, Runtime
from flotilla.services.metadata.store import MetadataStore

SPEC = AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b'{"ociVersion":"1.0.2"}')


def _c(id: str, **kw: object) -> Container:
    kw.setdefault("runtime", Runtime("io.containerd.runc.v2", AnyValue("containerd.runc.v1.Options", b"\x01")))
    kw.setdefault("spec", SPEC)
    return Container(id=id, **kw)  # type: ignore[arg-type]


def test_create_get_keeps_every_field(store: MetadataStore) -> None:
    made = store.create_container("ns", _c("c1", labels={"a": "1", "drop": ""}, image="docker.io/x:1",
                                           snapshotter="overlayfs", snapshot_key="c1",
                                           extensions={"ext": AnyValue("t", b"\x00\xff")}))
    got = store.get_container("ns", "c1")
    assert got == made
    assert got.labels == {"a": "1"} and got.spec == SPEC and got.extensions["ext"].value == b"\x00\xff"
    assert got.runtime.options == AnyValue("containerd.runc.v1.Options", b"\x01")
    assert got.created_at == got.updated_at > 0
    assert [n.name for n in store.list_namespaces()] == ["ns"]  # made on first write


@pytest.mark.parametrize("container, message", [
    (_c("bad id"), "create container failed validation: container.ID: identifier \"bad id\" must match"),
    (_c(""), "create container failed validation: container.ID: identifier must not be empty"),
    (_c("c", runtime=Runtime("")), "create container failed validation: container.Runtime.Name must be set"),
    (_c("c", spec=None), "create container failed validation: container.Spec must be set"),
    (_c("c", snapshot_key="k"), "create container failed validation: container.Snapshotter must be set if container.SnapshotKey is set"),
    (_c("c", extensions={"": AnyValue()}), "create container failed validation: container.Extension keys must not be zero-length"),
    (_c("c", labels={"k": "v" * 5000}), "create container failed validation: containers.Labels: label key and value greater than maximum size"),
])
def test_invalid_containers_are_refused(store: MetadataStore, container: Container, message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        store.create_container("ns", container)
    assert exc.value.message.startswith(message) and exc.value.message.endswith(": invalid argument")
    assert store.list_containers("ns") == []


def test_duplicate_and_missing(store: MetadataStore) -> None:
    store.create_container("ns", _c("c1"))
    with pytest.raises(AlreadyExists, match='^container "c1": already exists$'):
        store.create_container("ns", _c("c1", image="other"))
    assert store.get_container("ns", "c1").image == ""
    with pytest.raises(NotFound, match='^container "zz" in namespace "ns": not found$'):
        store.get_container("ns", "zz")
    with pytest.raises(NotFound, match="^container zz: not found$"):
        store.delete_container("ns", "zz")
    with pytest.raises(NotFound, match='^container "zz": not found$'):
        store.update_container("ns", _c("zz"), ["labels.a"])


def test_field_masks(store: MetadataStore) -> None:
    store.create_container("ns", _c("c1", labels={"a": "1", "b": "2"}, image="i1", snapshotter="overlayfs",
                                    snapshot_key="k1"))
    up = store.update_container("ns", Container("c1", labels={"a": "9", "c": "3"}), ["labels.a", "labels.b"])
    assert up.labels == {"a": "9"} and up.image == "i1" and up.snapshot_key == "k1"
    up = store.update_container("ns", Container("c1", image="i2", snapshot_key="k2"), ["image", "snapshotkey"])
    assert (up.image, up.snapshot_key, up.labels) == ("i2", "k2", {"a": "9"})
    up = store.update_container("ns", Container("c1", extensions={"x": AnyValue("t", b"1")}), ["extensions.x"])
    assert up.extensions == {"x": AnyValue("t", b"1")}
    with pytest.raises(InvalidArgument, match='^cannot update "runtime" field on "c1": invalid argument$'):
        store.update_container("ns", Container("c1"), ["runtime"])
    with pytest.raises(InvalidArgument, match="update failed validation: container.Spec must be set"):
        store.update_container("ns", Container("c1"), ["spec"])
    got = store.get_container("ns", "c1")
    assert got.spec == SPEC and got.updated_at > got.created_at


def test_full_replace_keeps_immutable_fields(store: MetadataStore) -> None:
    store.create_container("ns", _c("c1", labels={"a": "1"}, snapshotter="overlayfs", snapshot_key="k"))
    with pytest.raises(InvalidArgument, match="^container.Snapshotter field is immutable: invalid argument$"):
        store.update_container("ns", _c("c1", snapshotter="native", snapshot_key="k"), [])
    with pytest.raises(InvalidArgument, match="^container.Runtime.Name field is immutable: invalid argument$"):
        store.update_container("ns", _c("c1", runtime=Runtime("other"), snapshotter="overlayfs"), [])
    up = store.update_container("ns", _c("c1", labels={"z": "2"}, image="new", snapshotter="overlayfs",
                                         snapshot_key="k2"), [])
    assert (up.labels, up.image, up.snapshot_key) == ({"z": "2"}, "new", "k2")
    with pytest.raises(InvalidArgument, match="^must specify a container id: invalid argument$"):
        store.update_container("ns", Container(""), [])


def test_list_filters_and_namespace_isolation(store: MetadataStore) -> None:
    store.create_container("a", _c("one", labels={"role": "web", "dotted.key": "x"}, image="img:1"))
    store.create_container("a", _c("two", labels={"role": "db"}, runtime=Runtime("io.containerd.runsc.v1")))
    store.create_container("b", _c("one", labels={"role": "other"}))
    ids = lambda fs: [c.id for c in store.list_containers("a", fs)]  # noqa: E731
    assert ids([]) == ["one", "two"]
    assert ids(["labels.role==web"]) == ["one"]
    assert ids(["labels.role==db", "image==img:1"]) == ["one", "two"]          # any of
    assert ids(["runtime.name==io.containerd.runsc.v1"]) == ["two"]
    assert ids(["image"]) == ["one"]
    assert ids(['labels."dotted.key"==x']) == ["one"]
    assert ids(["id~=^t"]) == ["two"]
    with pytest.raises(InvalidArgument):
        store.list_containers("a", ["labels.role=="])
    assert [c.labels["role"] for c in store.list_containers("b")] == ["other"]
    store.delete_container("b", "one")
    assert ids([]) == ["one", "two"] and store.list_containers("b") == []
    with pytest.raises(NotFound):
        store.get_container("b", "two")


def test_lists_travel_in_pages_of_a_byte_budget(store: MetadataStore) -> None:
    for i in range(30):
        store.create_container("ns", _c(f"c{i:02d}", labels={"odd": str(i % 2)}))
    got, after, pages = [], "", 0
    while True:
        items, after = store.list_containers_page("ns", ["labels.odd==1"], after, budget=2000)
        got += [c["id"] for c in items]
        pages += 1
        if not after:
            break
    assert got == [f"c{i:02d}" for i in range(1, 30, 2)] and pages > 2
    assert store.list_containers_page("ns", [], "", 0)[1] == ""
