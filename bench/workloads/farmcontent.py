"""Issue 24's figures: content across a farm of 4 hosts against 4 containerds.

One farm (flotilla/testing/farm.py: 4 host namespaces on a bridge of their own, a NATS
cluster, PostgreSQL, a docker-registry in a namespace of its own whose link is shaped with
``tc`` to 200 Mbit/s); in the same 4 host namespaces, 4 Debian containerds. Every round
pushes a new 256 MiB single-layer image (so every pull is cold where nothing shared it) and
``ctr image pull``s it, ctr running in the host's namespace (containerd 1.6's ctr fetches
itself), the Flotilla hosts against their sockets, the containerds against theirs:

- one host alone (a cold pull);
- all 4 at the same moment: seconds until all 4 have it, and bytes out of the registry per
  image byte (Flotilla fetches each blob once for the farm; 4 containerds, 4 times);
- one host, then the other 3 one after another: a later host's pull;
- Flotilla only: one 256 MiB blob copied host to host, and this machine's plain-socket limit
  between two host namespaces, into nothing and into a file made durable (a copy's bytes
  go to disk, and this machine's disk takes about 200-230 MB/s).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

from flotilla.testing.farm import Farm, FarmHost
from flotilla.testing.images import Image, random_layers_image
from flotilla.testing.peers import CTR, ContainerdPeer

from ..harness import Target, Workload

HOSTS = 4
IMAGE_MIB = 256
RATE = "200mbit"
NS = "bench-farm"
_state: dict[str, object] = {}

_LOCAL_FILE = """
import asyncio, sys, time
from flotilla.libs.api.content import ContentClient
from flotilla.libs.bus import Bus
async def main(seed, prefix, ns, digest):
    bus = await Bus.connect("nats://127.0.0.1:4222", "bench", credentials=seed)
    started = time.perf_counter()
    await ContentClient(bus, prefix, timeout=600).local_file(ns, digest)
    print(time.perf_counter() - started)
    await bus.close()
asyncio.run(main(*sys.argv[1:]))
"""
# the receiving end of the plain-socket limit: into nothing, or (a path given) into a file
# made durable, as a copy is
_SINK = """
import os, socket, sys, time
s = socket.create_server((sys.argv[1], 7590)); c, _ = s.accept(); buf = bytearray(4 << 20); n = 0
out = open(sys.argv[2], "wb") if len(sys.argv) > 2 else None
started = time.perf_counter()
while k := c.recv_into(buf):
    n += k
    if out:
        out.write(memoryview(buf)[:k])
if out:
    out.flush(); os.fsync(out.fileno()); out.close(); os.unlink(sys.argv[2])
print(n / (time.perf_counter() - started) / 1e6)
"""
_SOURCE = """
import socket, sys, time
for _ in range(100):
    try:
        s = socket.create_connection((sys.argv[1], 7590)); break
    except OSError:
        time.sleep(0.05)
with open(sys.argv[2], "rb") as f:
    s.sendfile(f)
s.close()
"""


def _farm() -> Farm:
    return _state["farm"]  # type: ignore[return-value]


def _setup(t: Target) -> None:
    if "farm" not in _state:
        farm = Farm(HOSTS).__enter__()  # a start that fails removes what it made
        _state["farm"] = farm
        try:
            assert farm.network is not None
            link = farm.network.others["registry"].name
            subprocess.run(["ip", "netns", "exec", link, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
                            RATE, "burst", "256kb", "latency", "400ms"], check=True, capture_output=True)
            peers = []
            _state["containerds"] = peers
            for host in farm.hosts:
                peer = ContainerdPeer(netns=host.net.name)
                peers.append(peer)
                peer.start()
        except BaseException:
            _teardown(t)
            raise


def _teardown(_t: Target) -> None:
    for peer in _state.pop("containerds", []):  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            peer.stop()
    farm = _state.pop("farm", None)
    if isinstance(farm, Farm):
        farm.stop()


def _sockets(t: Target) -> list[str]:
    if t.name == "flotilla":
        return [h.socket for h in _farm().hosts]
    return [p.address for p in _state["containerds"]]  # type: ignore[attr-defined]


def _pull(host: FarmHost, socket: str, ref: str) -> float:
    started = time.perf_counter()
    out = subprocess.run(host.command(CTR, "--address", socket, "--namespace", NS, "images", "pull", "--plain-http",
                                      ref), capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{host.id}: pull {ref}: {out.stderr[-1500:]}")
    return time.perf_counter() - started


def _new_image(tag: str) -> tuple[str, Image]:
    image = random_layers_image(IMAGE_MIB, layers=1)
    return _farm().push("big", tag, image), image


def _blob_bytes(image: Image) -> tuple[int, int]:
    """(bytes of the image's blobs, bytes the registry sent of them so far)."""
    registry = _farm().registry
    assert registry is not None
    blobs = (image.config, *image.layers)
    return sum(len(b.data) for b in blobs), sum(registry.blob_bytes(b.digest) for b in blobs)


def _forget(sockets: list[str], ref: str) -> None:
    """The image and what it held, gone from every host (disk stays bounded)."""
    for host, socket in zip(_farm().hosts, sockets):
        subprocess.run(host.command(CTR, "--address", socket, "--namespace", NS, "images", "rm", "--sync", ref),
                       capture_output=True, timeout=120)


def _run(t: Target) -> dict[str, float]:
    hosts, sockets, out = _farm().hosts, _sockets(t), {}
    tag = f"{t.name}-{uuid.uuid4().hex[:8]}"

    ref, _ = _new_image(tag + "-cold")
    out["cold pull, one host s"] = cold = _pull(hosts[0], sockets[0], ref)
    _forget(sockets, ref)

    ref, image = _new_image(tag + "-together")
    times: dict[int, float] = {}
    started = time.perf_counter()
    pullers = [threading.Thread(target=lambda i=i: times.__setitem__(i, _pull(hosts[i], sockets[i], ref)))
               for i in range(HOSTS)]
    for p in pullers:
        p.start()
    for p in pullers:
        p.join(900)
    if len(times) != HOSTS:
        raise RuntimeError(f"only {len(times)} of {HOSTS} simultaneous pulls finished")
    out[f"{HOSTS} pull at once: s until all have it"] = together = time.perf_counter() - started
    out[f"{HOSTS} pull at once: / one host's cold pull"] = together / cold
    size, sent = _blob_bytes(image)
    out[f"{HOSTS} pull at once: registry bytes / image bytes"] = sent / size
    _forget(sockets, ref)

    ref, _ = _new_image(tag + "-after")
    first = _pull(hosts[0], sockets[0], ref)
    later = statistics.median(_pull(hosts[i], sockets[i], ref) for i in range(1, HOSTS))
    out["a later host's pull s"] = later
    out["cold / later host's pull"] = first / later
    _forget(sockets, ref)

    if t.name == "flotilla":
        out.update(_host_to_host())
    return out


def _host_to_host() -> dict[str, float]:
    """A 256 MiB blob written on host 1 (kept on two hosts), then asked for on a host that
    holds none: the seconds of its copy; and the plain-socket limit between two hosts."""
    farm = _farm()
    path = farm.base / "bench-blob"
    path.write_bytes(os.urandom(IMAGE_MIB << 20))
    ingest = subprocess.run(farm.hosts[0].command(
        "sh", "-c", f"{CTR} --address {farm.hosts[0].socket} --namespace {NS} content ingest bench-blob < {path}"),
        capture_output=True, text=True, timeout=300)
    if ingest.returncode != 0:
        raise RuntimeError(ingest.stderr[-1500:])
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    hexpart = digest.split(":")[1]
    reader = next(h for h in farm.hosts if not (h.suite.root / "content/blobs/sha256" / hexpart).exists())
    took = subprocess.run(reader.command(sys.executable, "-c", _LOCAL_FILE, str(reader.tester_seed()), farm.prefix,
                                         NS, digest), capture_output=True, text=True, timeout=300)
    if took.returncode != 0:
        raise RuntimeError(took.stderr[-1500:])
    copy_mbs = (IMAGE_MIB << 20) / float(took.stdout.split()[-1]) / 1e6
    a, b = farm.hosts[0], farm.hosts[1]

    def plain(*into: str) -> float:
        sink = subprocess.Popen(b.command(sys.executable, "-c", _SINK, b.net.address, *into), stdout=subprocess.PIPE,
                                text=True)
        subprocess.run(a.command(sys.executable, "-c", _SOURCE, b.net.address, str(path)), check=True, timeout=120)
        return float(sink.communicate(timeout=120)[0].split()[-1])
    plain_mbs, to_disk_mbs = plain(), plain(str(farm.base / "bench-sink"))
    subprocess.run(a.command(CTR, "--address", a.socket, "--namespace", NS, "content", "rm", digest),
                   capture_output=True, timeout=60)
    path.unlink()
    return {"host to host copy of 256 MiB MB/s": copy_mbs, "plain socket between two hosts MB/s": plain_mbs,
            "plain socket into a file, fsynced MB/s": to_disk_mbs,
            "host to host copy / plain socket into a file": copy_mbs / to_disk_mbs}


def workloads() -> list[Workload]:
    return [Workload("farm content", _run, repeat=2, unit="", setup=_setup, teardown=_teardown)]
