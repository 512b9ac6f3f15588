"""libs.distribution on its own: references, platforms, manifests, auth and hostile registries."""

from __future__ import annotations

import pytest

from flotilla.libs.distribution import (AuthFailed, BadManifest, Credentials, Descriptor, DigestMismatch, Index,
                                        Manifest, RefNotFound, RegistryClient, ShortRead, parse_manifest,
                                        parse_reference, platforms)
from flotilla.libs.errors import InvalidArgument, NotFound
from flotilla.testing import Registry
from flotilla.testing.images import busybox_image, multiplatform_image, push, random_layers_image

from .fakeregistry import Blob, FakeRegistry


def test_references_normalise_like_docker() -> None:
    assert str(parse_reference("busybox")) == "docker.io/library/busybox:latest"
    r = parse_reference("127.0.0.1:5000/team/app:v1")
    assert (r.host, r.repository, r.tag, r.object) == ("127.0.0.1:5000", "team/app", "v1", "v1")
    d = "sha256:" + "a" * 64
    assert parse_reference(f"localhost/app@{d}").object == d
    for bad in ("", "Upper/case:x", "host:5000/app:bad tag", "app@sha256:short"):
        with pytest.raises(InvalidArgument):
            parse_reference(bad)


def test_platforms_select_from_an_index() -> None:
    amd, arm = platforms.parse("linux/amd64"), platforms.parse("linux/arm64")
    assert str(arm) == "linux/arm64/v8"
    descs = [Descriptor("m", "sha256:" + c * 64, 1, platform=p) for c, p in (("a", amd), ("b", platforms.parse("linux/arm64/v8")))]
    assert platforms.select(descs, arm).digest.endswith("b" * 64)
    assert platforms.select(descs, amd).digest.endswith("a" * 64)
    with pytest.raises(NotFound, match="linux/s390x"):
        platforms.select(descs, platforms.parse("linux/s390x"))


def test_manifest_parsing_rejects_garbage_clearly() -> None:
    img = busybox_image()
    assert isinstance(parse_manifest(img.manifest.data), Manifest)
    assert isinstance(parse_manifest(multiplatform_image().index.data), Index)  # type: ignore[union-attr]
    for data, why in ((b"{not json", "not valid JSON"), (b"[]", "not a JSON object"),
                      (b'{"schemaVersion": 1, "fsLayers": []}', "schema 1"),
                      (b'{"schemaVersion": 2, "config": {"digest": 1}, "layers": []}', "invalid descriptor")):
        with pytest.raises(BadManifest, match=why):
            parse_manifest(data)


async def test_fetch_verifies_digests_and_resumes_with_range() -> None:
    img = random_layers_image(4, layers=1)
    layer = img.layers[-1]
    with FakeRegistry() as fake:
        fake.add_image("app", "v1", img)
        fake.blobs[layer.digest].cut_after = len(layer.data) // 3
        rc = RegistryClient()
        ref = parse_reference(f"{fake.host}/app:v1")
        top = await rc.resolve(ref)
        assert top.digest == img.manifest.digest
        got = bytearray()

        async def sink(b: bytes) -> None:
            got.extend(b)
        desc = Descriptor(layer.media_type, layer.digest, len(layer.data))
        await rc.fetch_blob(ref, desc, sink)
        assert bytes(got) == layer.data
        assert any(r.startswith(f"GET /v2/app/blobs/{layer.digest} bytes=") for r in fake.requests), fake.requests

        # bytes that do not match their digest never reach the sink's last chunk
        fake.blobs[layer.digest].send = bytes(reversed(layer.data))
        got.clear()
        with pytest.raises(DigestMismatch, match="digest mismatch"):
            await rc.fetch_blob(ref, desc, sink)
        assert len(got) < len(layer.data)

        # a blob that always ends early is a clear data-loss error
        fake.blobs[layer.digest] = Blob(layer.data, truncate=1000)
        with pytest.raises(ShortRead, match=f"ended at 1000 of {len(layer.data)} bytes"):
            await rc.fetch_blob(ref, desc, sink)

        with pytest.raises(RefNotFound):
            await rc.resolve(parse_reference(f"{fake.host}/app:nope"))


async def test_token_auth_flow() -> None:
    with FakeRegistry(token_auth=("flo", "tilla")) as fake:
        fake.add_image("app", "v1", busybox_image())
        ref = parse_reference(f"{fake.host}/app:v1")
        with pytest.raises(AuthFailed, match="token server .* refused anonymous access"):
            await RegistryClient().resolve(ref)
        with pytest.raises(AuthFailed, match="refused user 'flo'"):
            await RegistryClient(Credentials("flo", "wrong")).resolve(ref)
        desc = await RegistryClient(Credentials("flo", "tilla")).resolve(ref)
        assert desc.size > 0


async def test_basic_auth_against_docker_registry() -> None:
    with Registry(auth=("flo", "tilla")) as r:
        push(r.host, "busybox", "latest", busybox_image(), auth=("flo", "tilla"))
        ref = parse_reference(f"{r.host}/busybox:latest")
        with pytest.raises(AuthFailed, match="requires credentials .* none given"):
            await RegistryClient().resolve(ref)
        with pytest.raises(AuthFailed, match="authorization failed for user 'flo'"):
            await RegistryClient(Credentials("flo", "nope")).resolve(ref)
        rc = RegistryClient(Credentials.parse("flo:tilla"))
        desc = await rc.resolve(ref)
        doc = parse_manifest(await rc.fetch_manifest(ref, desc))
        assert isinstance(doc, Manifest) and len(doc.layers) == 1
