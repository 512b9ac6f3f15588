"""Image and lease records: containerd's validation, field masks, filters and messages."""

from __future__ import annotations

import pytest

from flotilla.libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from flotilla.services.metadata.api import AnyValue, Container, Descriptor, Image, Lease, Resource, Runtime
from flotilla.services.metadata.store import MetadataStore

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
MT = "application/vnd.oci.image.manifest.v1+json"


def _img(name: str, digest: str = D1, **kw: object) -> Image:
    return Image(name, target=Descriptor(MT, digest, 100, {"org.opencontainers.x": "y"}), **kw)  # type: ignore[arg-type]


def test_image_create_get_list_delete(store: MetadataStore) -> None:
    made = store.create_image("ns", _img("docker.io/library/a:1", labels={"l": "1", "empty": ""}))
    assert made.labels == {"l": "1"}
    got = store.get_image("ns", "docker.io/library/a:1")
    assert got == made and got.target.annotations == {"org.opencontainers.x": "y"}
    store.create_image("ns", _img("docker.io/library/b:1", D2))
    names = lambda fs: [i.name for i in store.list_images("ns", fs)]  # noqa: E731
    assert names([]) == ["docker.io/library/a:1", "docker.io/library/b:1"]
    assert names([f"target.digest=={D2}"]) == ["docker.io/library/b:1"]
    assert names(["labels.l==1"]) == ["docker.io/library/a:1"]
    assert names([f"target.mediatype=={MT}"]) == names([])
    assert names(['annotations."org.opencontainers.x"==y']) == names([])
    assert names(["name~=b:1$"]) == ["docker.io/library/b:1"]
    with pytest.raises(AlreadyExists, match='^image "docker.io/library/a:1": already exists$'):
        store.create_image("ns", _img("docker.io/library/a:1", D2))
    store.delete_image("ns", "docker.io/library/a:1")
    with pytest.raises(NotFound, match='^image "docker.io/library/a:1": not found$'):
        store.get_image("ns", "docker.io/library/a:1")
    with pytest.raises(NotFound, match='^image "docker.io/library/a:1": not found$'):
        store.delete_image("ns", "docker.io/library/a:1")
    assert store.list_images("other") == []


@pytest.mark.parametrize("image, message", [
    (Image("", target=Descriptor(MT, D1, 1)), "Image.Name required"),
    (Image("x", target=Descriptor(MT, "sha256:abc", 1)),
     'Target.Digest "sha256:abc" invalid: invalid checksum digest length: invalid argument'),
    (Image("x", target=Descriptor(MT, "nocolon", 1)),
     'Target.Digest "nocolon" invalid: invalid checksum digest format: invalid argument'),
    (Image("x", target=Descriptor(MT, "md5:" + "a" * 32, 1)),
     'Target.Digest "md5:' + "a" * 32 + '" invalid: unsupported digest algorithm: invalid argument'),
    (Image("x", target=Descriptor(MT, D1, 0)), "Target.Size must be greater than zero: invalid argument"),
    (Image("x", target=Descriptor("", D1, 1)), "Target.MediaType must be set: invalid argument"),
    (Image("x", labels={"k": "v" * 5000}, target=Descriptor(MT, D1, 1)),
     "image.Labels: label key and value greater than maximum size (4096 bytes), key: k: invalid argument"),
])
def test_invalid_images(store: MetadataStore, image: Image, message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        store.create_image("ns", image)
    assert exc.value.message == message
    assert store.list_images("ns") == []


def test_image_field_masks(store: MetadataStore) -> None:
    store.create_image("ns", _img("a", labels={"x": "1", "y": "2"}))
    up = store.update_image("ns", Image("a", labels={"x": "9"}), ["labels.x", "labels.y"])
    assert up.labels == {"x": "9"} and up.target.digest == D1
    up = store.update_image("ns", Image("a", target=Descriptor(annotations={"n": "v"})), ["annotations.n"])
    assert up.target.annotations == {"org.opencontainers.x": "y", "n": "v"}
    up = store.update_image("ns", _img("a", D2), ["target"])
    assert up.target.digest == D2 and up.labels == {"x": "9"}
    with pytest.raises(InvalidArgument, match='^cannot update "name" field on image "a": invalid argument$'):
        store.update_image("ns", _img("a"), ["name"])
    with pytest.raises(InvalidArgument, match="Target.Size must be greater than zero"):
        store.update_image("ns", Image("a", target=Descriptor(MT, D1, 0)), ["target"])
    assert store.get_image("ns", "a").target.digest == D2  # the bad update changed nothing
    up = store.update_image("ns", _img("a", labels={"only": "this"}), [])
    assert up.labels == {"only": "this"} and up.target.digest == D1
    with pytest.raises(NotFound, match='^image "zz": not found$'):
        store.update_image("ns", _img("zz"), [])


def test_leases_and_resources(store: MetadataStore) -> None:
    lease = store.create_lease("ns", Lease("l1", {"containerd.io/gc.expire": "2099-01-01T00:00:00Z"}))
    assert lease.created_at > 0
    with pytest.raises(AlreadyExists, match='^lease "l1": already exists$'):
        store.create_lease("ns", Lease("l1"))
    random = store.create_lease("ns", Lease(""))
    assert random.id and random.id != "l1"
    assert sorted(x.id for x in store.list_leases("ns")) == sorted(["l1", random.id])
    assert [x.id for x in store.list_leases("ns", ["id==l1"])] == ["l1"]
    assert [x.id for x in store.list_leases("ns", ['labels."containerd.io/gc.expire"'])] == ["l1"]
    store.add_lease_resource("ns", "l1", Resource(D1, "content"))
    store.add_lease_resource("ns", "l1", Resource(D1, "content"))  # twice is once
    store.add_lease_resource("ns", "l1", Resource("snap-1", "snapshots/overlayfs"))
    store.add_lease_resource("ns", "l1", Resource("ref-1", "ingests"))
    assert store.list_lease_resources("ns", "l1") == [
        Resource(D1, "content"), Resource("ref-1", "ingests"), Resource("snap-1", "snapshots/overlayfs")]
    with pytest.raises(InvalidArgument, match="^invalid content resource id x: invalid checksum digest format"):
        store.add_lease_resource("ns", "l1", Resource("x", "content"))
    with pytest.raises(InvalidArgument, match="^invalid snapshot resource type snapshots: invalid argument$"):
        store.add_lease_resource("ns", "l1", Resource("x", "snapshots"))
    with pytest.raises(InvalidArgument, match="^invalid resource type content/x: invalid argument$"):
        store.add_lease_resource("ns", "l1", Resource(D1, "content/x"))
    with pytest.raises(Unimplemented, match="^resource type other not supported yet: not implemented$"):
        store.add_lease_resource("ns", "l1", Resource("x", "other"))
    with pytest.raises(NotFound, match='^lease "nope": not found$'):
        store.add_lease_resource("ns", "nope", Resource(D1, "content"))
    with pytest.raises(NotFound, match='^lease "nope": not found$'):
        store.list_lease_resources("ns", "nope")
    store.delete_lease_resource("ns", "l1", Resource(D1, "content"))
    assert Resource(D1, "content") not in store.list_lease_resources("ns", "l1")
    assert store.list_leases("other") == []
    store.delete_lease("ns", "l1")
    with pytest.raises(NotFound, match='^lease "l1": not found$'):
        store.delete_lease("ns", "l1")
    with pytest.raises(NotFound):
        store.list_lease_resources("ns", "l1")


def test_namespace_delete_refuses_what_it_holds(store: MetadataStore) -> None:
    store.create_image("ns", _img("a"))
    store.create_container("ns", Container("c", runtime=Runtime("r"), spec=AnyValue("t", b"")))
    store.create_lease("ns", Lease("l"))
    with pytest.raises(FailedPrecondition) as exc:
        store.delete_namespace("ns", blobs=True, snapshotters=["overlayfs"])
    assert exc.value.message == ('namespace "ns" must be empty, but it still has images, blobs, containers, '
                                 'snapshots on "overlayfs" snapshotter: failed precondition')
    store.delete_image("ns", "a")
    store.delete_container("ns", "c")
    with pytest.raises(FailedPrecondition, match="still has blobs: failed"):
        store.delete_namespace("ns", blobs=True)
    store.delete_namespace("ns")  # leases go with it
    assert store.list_leases("ns") == [] and store.list_namespaces() == []


def test_integrity_check_passes_and_finds_damage(store: MetadataStore) -> None:
    from sqlalchemy import insert, update

    from flotilla.services.metadata import db
    store.create_image("ns", _img("a"))
    store.create_container("ns", Container("c", runtime=Runtime("r"), spec=AnyValue("t", b"\x00")))
    store.create_lease("ns", Lease("l"))
    store.add_lease_resource("ns", "l", Resource(D1, "content"))
    assert store.check_integrity() == []
    with store.engine.begin() as conn:
        conn.execute(update(db.images).values(labels="{not json"))
        conn.execute(insert(db.containers).values(namespace="ghost", id="x", labels="{}", image="", runtime_name="r",
                                                  snapshotter="", snapshot_key="", extensions=b"\x80",
                                                  created_at=1, updated_at=1))
    problems = store.check_integrity()
    assert any("images ns/a: undecodable" in p for p in problems)
    assert any("containers ghost/x: namespace missing" in p for p in problems)
