"""Issue 27 on a farm (docs/farm.md): a containerd on host B, whose store is host B's
Flotilla, reads and runs a blob that a containerd on host A pulled through host A's. The
content is the farm's: host B's reads give host B a copy of its own; host B's snapshots are
its own."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from flotilla.testing.farm import Farm, FarmHost
from flotilla.testing.netns import Host
from flotilla.testing.peers import ContainerdPeer
from flotilla.testing.postgres import available

from .helpers import (
    SNAPSHOTTER, CountingProxy, content_digest, digests, image_of_its_own, pull, pushed, run, wait_for,
)

pytestmark = pytest.mark.skipif(not available(), reason="PostgreSQL is installed by make test")


class ConsumersFarm(Farm):
    """A farm whose host N serves one consumer, ``farm-hN``."""

    def _host(self, index: int, net: Host, ca: Path) -> FarmHost:
        host = super()._host(index, net, ca)
        host.suite.extra_env["FLOTILLA_PROXY_CONSUMERS"] = f"farm-h{index + 1}"
        return host


def _socket(host: FarmHost) -> Path:
    return host.suite.state / "proxy" / f"farm-h{host.index + 1}.sock"


def _blob(host: FarmHost, digest: str) -> Path:
    return host.suite.root / "content" / "blobs" / "sha256" / digest.split(":")[1]


def test_containerd_on_host_b_reads_what_containerd_on_host_a_pulled() -> None:
    marker = uuid.uuid4().hex
    image = image_of_its_own(extra_mib=2, marker=marker)
    with ConsumersFarm(2) as farm:
        h1, h2 = farm.hosts
        for host in farm.hosts:
            wait_for(f"{host.id}'s consumer socket", _socket(host).is_socket, 10)
        assert farm.registry is not None
        ref = pushed(farm.registry.host, image)  # the containerds run here, beside it
        # containerd talks to a host's gateway through its socket's path, from any network
        with CountingProxy(farm.registry.host) as registry, \
                ContainerdPeer(proxy=_socket(h1)) as a, ContainerdPeer(proxy=_socket(h2)) as b:
            named = registry.host + ref[ref.index("/"):]
            pull(a, ref, registry.host)
            registry.reset()
            pull(b, ref, registry.host)
            assert registry.get("blobs") == 0, registry.paths
            for digest in digests(image):
                assert content_digest(b, digest) == digest  # copied from host 1 as it was read
                assert _blob(h2, digest).is_file()
            ran = run(b, "run", "--rm", "--snapshotter", SNAPSHOTTER, named, "farm-b", "cat", "/etc/test-id").stdout
            assert ran == marker
            # each host unpacked for its own containerd
            assert list((h2.suite.root / "snapshots" / "overlayfs").glob("*/fs/etc/test-id"))
            run(a, "image", "rm", "--sync", named)
            assert content_digest(b, digests(image)[0]) == digests(image)[0]
            run(b, "image", "rm", "--sync", named)
            # the last owner gone, every host drops its copy
            wait_for("no host holds a copy", lambda: not any(_blob(h, d).exists() for h in farm.hosts
                                                             for d in digests(image)), 20)
