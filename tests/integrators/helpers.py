"""What the integrators' tests share: a registry proxy that counts requests, images of
their own per test, and looks into Flotilla's store."""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from flotilla.testing import PrivateSuite, ctr
from flotilla.testing.images import Entry, Image, build_image, busybox_entries, push
from flotilla.testing.peers import ContainerdPeer

SNAPSHOTTER = "flotilla"           # the proxy plugin's name in the consumers' config.toml
NAMESPACE_PREFIX = "proxy."        # a consumer's Flotilla namespace is this + its name
CONSUMERS = ("solo", "a", "b", "chaos", "x", "y", "gw")


def consumer_socket(suite: PrivateSuite, name: str) -> Path:
    return suite.suite.state / "proxy" / f"{name}.sock"


def image_of_its_own(extra_mib: int = 0, layers: int = 1, marker: str = "") -> Image:
    """busybox with a marker of its own in /etc/test-id (and ``extra_mib`` of random bytes
    in ``layers`` more layers): digests no other test shares, so counts and removals are
    this test's."""
    mark = Entry("etc/test-id", data=(marker or uuid.uuid4().hex).encode())
    more = [[Entry(f"blob{i}", data=os.urandom((extra_mib << 20) // layers))] for i in range(layers)] \
        if extra_mib else []
    return build_image([[*busybox_entries(), mark], *more])


def pushed(registry: str, image: Image) -> str:
    """Push ``image`` under a repository of its own; returns its reference."""
    repo = "t" + uuid.uuid4().hex[:10]
    push(registry, repo, "latest", image)
    return f"{registry}/{repo}:latest"


def digests(image: Image) -> list[str]:
    return [b.digest for b in image.blobs()]


def blob_file(suite: PrivateSuite, digest: str) -> Path:
    algorithm, _, hexpart = digest.partition(":")
    return suite.suite.root / "content" / "blobs" / algorithm / hexpart


def flotilla_content(suite: PrivateSuite, consumer: str) -> set[str]:
    """The digests Flotilla holds for ``consumer``, asked on Flotilla's own socket."""
    out = suite.ctr("content", "ls", "-q", namespace=NAMESPACE_PREFIX + consumer, check=True).stdout
    return set(out.split())


def flotilla_snapshots(suite: PrivateSuite, consumer: str) -> list[str]:
    """The keys of ``consumer``'s snapshots in Flotilla's overlayfs snapshotter."""
    out = suite.ctr("snapshots", "--snapshotter", "overlayfs", "ls",
                    namespace=NAMESPACE_PREFIX + consumer, check=True).stdout
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def run(peer: ContainerdPeer, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """ctr against ``peer``; fails the test with containerd's log tail when ctr fails."""
    done = ctr(peer.address, *args, timeout=timeout)
    if done.returncode != 0:
        tail = peer.log.read_text()[-3000:] if peer.log.exists() else ""
        raise AssertionError(f"ctr {' '.join(args)}: exit {done.returncode}\n{done.stdout[-2000:]}\n"
                             f"{done.stderr[-2000:]}\ncontainerd's log:\n{tail}")
    return done


def pull(peer: ContainerdPeer, ref: str, registry: str = "") -> None:
    if registry:  # the same repository through another host:port (the counting proxy)
        ref = registry + ref[ref.index("/"):]
    run(peer, "image", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref, timeout=300)


def content_digest(peer: ContainerdPeer, digest: str) -> str:
    """sha256 of what ``ctr content get`` gives back from ``peer``."""
    done = subprocess.run(["ctr", "--address", peer.address, "content", "get", digest],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return "sha256:" + hashlib.sha256(done.stdout).hexdigest()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


class CountingProxy:
    """An HTTP proxy on loopback in front of a registry that counts what is asked of it:
    ``(method, kind)`` with kind ``blobs``, ``manifests`` or ``other``. Only what pulls
    send (GET and HEAD) is forwarded. ``on_blob`` is called with each blob GET's path
    before it is forwarded (a test's moment to break something mid-pull)."""

    def __init__(self, upstream: str, on_blob: Callable[[str], None] | None = None) -> None:
        self.upstream, self.on_blob = upstream, on_blob
        self.counts: Counter[tuple[str, str]] = Counter()
        self.paths: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                kind = "blobs" if "/blobs/" in self.path else "manifests" if "/manifests/" in self.path else "other"
                with proxy._lock:
                    proxy.counts[(self.command, kind)] += 1
                    proxy.paths.append((self.command, self.path))
                if kind == "blobs" and self.command == "GET" and proxy.on_blob is not None:
                    proxy.on_blob(self.path)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read() if self.command != "HEAD" else b""
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length")
                    self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(body)))
                    self.end_headers()
                    if body:
                        self.wfile.write(body)
                finally:
                    conn.close()

            do_GET = _forward
            do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def get(self, kind: str) -> int:
        with self._lock:
            return self.counts[("GET", kind)]

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.paths.clear()

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
