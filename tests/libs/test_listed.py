"""libs/api/listed.py: the records' list entries parse as the gateway's own messages of them
(what the gateway sent before the encodings were kept), whatever the fields hold."""

from __future__ import annotations

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pbc
from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla.libs.api import listed
from flotilla.libs.api.metadata import AnyValue, Container, Descriptor, Image, Runtime
from flotilla.libs.wire import to_wire
from flotilla.services.gateway.containers import wire_to_pb as container_pb
from flotilla.services.gateway.images import wire_to_pb as image_pb

IMAGES = [
    Image("docker.io/library/busybox:latest", {"a": "1", "zz": "é" * 200},
          Descriptor("application/vnd.oci.image.index.v1+json", "sha256:" + "ab" * 32, 1 << 40,
                     {"org.opencontainers.image.ref.name": "latest"}),
          created_at=1_796_000_000_123_456_789, updated_at=1_796_000_001_000_000_000),
    Image("x", target=Descriptor("", "", 0)),  # every field at its default
    Image("n" * 300, {f"k{i}": "v" * i for i in range(40)}, Descriptor("m", "d", 127), 999, 1_000_000_000),
    Image("negative", target=Descriptor("m", "d", -5)),  # int64 as two's complement
]
CONTAINERS = [
    Container("c1", {"l": "v"}, "docker.io/library/busybox:latest",
              Runtime("io.containerd.runc.v2", AnyValue("containerd.runc.v1.Options", b"\x0a\x04runc")),
              AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b'{"ociVersion":"1.0.2"}' * 100),
              "overlayfs", "c1-snap", 1_796_000_000_000_000_001, 1_796_000_000_000_000_002,
              {"ext": AnyValue("t", b"\x00\xff"), "empty": AnyValue()}),
    Container("bare"),  # no runtime options, no spec, nothing else
    Container("empty-spec", spec=AnyValue()),
]


def test_an_image_entry_is_the_gateways_message_of_it() -> None:
    for image in IMAGES:
        got = pbi.ListImagesResponse.FromString(listed.image(image)).images
        assert list(got) == [image_pb(to_wire(image))]


def test_a_container_entry_with_its_spec_is_the_gateways_message_of_it() -> None:
    for c in CONTAINERS:
        entry = listed.container(c)
        assert list(pbc.ListContainersResponse.FromString(entry).containers) == [container_pb(to_wire(c))]
        assert pbc.ListContainerMessage.FromString(entry).container == container_pb(to_wire(c))


def test_joined_entries_are_a_list_answer_and_split_back() -> None:
    entries = [listed.image(i) for i in IMAGES * 50]  # lengths of one, two and three bytes
    joined = b"".join(entries)
    assert list(pbi.ListImagesResponse.FromString(joined).images) == [image_pb(to_wire(i)) for i in IMAGES * 50]
    assert list(listed.entries(joined)) == entries
    assert list(listed.entries(b"")) == []
