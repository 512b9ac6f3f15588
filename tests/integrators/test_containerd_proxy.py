"""Issue 27: a stock containerd (Debian's 1.6) with Flotilla as its content store and
snapshotter through ``[proxy_plugins]``, alone and two of them on one Flotilla store."""

from __future__ import annotations

from pathlib import Path

from flotilla.testing import PrivateSuite, Registry
from flotilla.testing.peers import ContainerdPeer

from .helpers import (
    SNAPSHOTTER, CountingProxy, blob_file, consumer_socket, content_digest, digests, flotilla_content,
    flotilla_snapshots, image_of_its_own, pull, pushed, run, wait_for,
)


def _own_stores(root: Path) -> list[str]:
    """What containerd keeps under its root of content or snapshots: nothing, when
    Flotilla is its store (its own metadata database is expected there)."""
    return sorted(p.name for p in root.iterdir()
                  if p.name.startswith(("io.containerd.content.", "io.containerd.snapshotter.")))


def test_stock_containerd_pulls_runs_and_removes_through_flotilla(proxy_suite: PrivateSuite,
                                                                  proxy_registry: Registry) -> None:
    image = image_of_its_own()
    ref = pushed(proxy_registry.host, image)
    with ContainerdPeer(proxy=consumer_socket(proxy_suite, "solo")) as peer:
        pull(peer, ref)
        assert run(peer, "run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "solo-hi", "echo", "hi").stdout == "hi\n"

        # containerd's view: its metadata, Flotilla's bytes and snapshots
        listed = run(peer, "content", "ls", "-q").stdout.split()
        assert set(digests(image)) <= set(listed)
        for digest in digests(image):
            assert content_digest(peer, digest) == digest
        keys = run(peer, "snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:]
        assert [k.split()[-1] for k in keys] == ["Committed"]

        # Flotilla's view, on its own socket: the same blobs, once on its disk, and the
        # unpacked layer; containerd's root holds none of either
        assert set(digests(image)) <= flotilla_content(proxy_suite, "solo")
        for digest in digests(image):
            assert blob_file(proxy_suite, digest).is_file()
        # the container's rootfs goes from Flotilla when containerd's collector, run after
        # ``run --rm`` returned, removes it from its backend: wait for that (bounded)
        wait_for("containerd's collector removing the container's snapshot",
                 lambda: len(flotilla_snapshots(proxy_suite, "solo")) == 1)
        snaps = flotilla_snapshots(proxy_suite, "solo")
        assert len(snaps) == 1 and snaps[0].endswith(keys[0].split()[0])  # "<ns>/<id>/<key>": containerd's backend key
        assert _own_stores(peer.root) == []

        run(peer, "image", "rm", "--sync", ref)
        assert run(peer, "content", "ls", "-q").stdout.split() == []
        assert run(peer, "snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:] == []
        assert flotilla_content(proxy_suite, "solo") == set()
        assert flotilla_snapshots(proxy_suite, "solo") == []
        for digest in digests(image):
            assert not blob_file(proxy_suite, digest).exists()


def test_two_containerds_share_blobs_and_lose_none(proxy_suite: PrivateSuite, proxy_registry: Registry) -> None:
    """A pulls; B's pull of the same image costs the registry no blob; A's removal and GC
    leave B's image whole and runnable; B's removal takes the bytes off the disk."""
    image = image_of_its_own(extra_mib=2, layers=2)
    ref = pushed(proxy_registry.host, image)
    blobs = digests(image)
    with CountingProxy(proxy_registry.host) as registry, \
            ContainerdPeer(proxy=consumer_socket(proxy_suite, "a")) as a, \
            ContainerdPeer(proxy=consumer_socket(proxy_suite, "b")) as b:
        pull(a, ref, registry.host)
        assert registry.get("blobs") == len(image.layers) + 1  # the layers and the config
        registry.reset()

        pull(b, ref, registry.host)
        assert registry.get("blobs") == 0, registry.paths
        assert registry.get("manifests") == 0, registry.paths  # the tag's HEAD only
        assert set(blobs) <= flotilla_content(proxy_suite, "a")
        assert set(blobs) <= flotilla_content(proxy_suite, "b")  # two holders, one file each
        assert all(blob_file(proxy_suite, d).is_file() for d in blobs)

        # A lets go: its image, and its collector's sweep (--sync waits for it)
        named = registry.host + ref[ref.index("/"):]
        run(a, "image", "rm", "--sync", named)
        assert flotilla_content(proxy_suite, "a").isdisjoint(blobs)
        assert flotilla_snapshots(proxy_suite, "a") == []
        assert set(blobs) <= flotilla_content(proxy_suite, "b")
        assert all(blob_file(proxy_suite, d).is_file() for d in blobs)
        for digest in blobs:  # complete: every byte readable through B
            assert content_digest(b, digest) == digest
        assert run(b, "run", "--rm", "--snapshotter", SNAPSHOTTER, named, "b-hi", "cat", "/etc/test-id").stdout

        # A pulling it again meanwhile would cost nothing either: B holds it
        registry.reset()
        pull(a, ref, registry.host)
        assert registry.get("blobs") == 0, registry.paths
        run(a, "image", "rm", "--sync", named)

        # B lets go: the last holder, so the bytes go
        run(b, "image", "rm", "--sync", named)
        assert flotilla_content(proxy_suite, "b").isdisjoint(blobs)
        assert flotilla_snapshots(proxy_suite, "b") == []
        for digest in blobs:
            assert not blob_file(proxy_suite, digest).exists(), digest
    # looking at the consumers' stores on Flotilla's socket made no Flotilla namespace of
    # them (Flotilla's own collector sweeps only those: docs/integrators.md)
    listed = proxy_suite.ctr("namespaces", "ls", "-q", check=True).stdout.split()
    assert not [ns for ns in listed if ns.startswith("proxy.")]
