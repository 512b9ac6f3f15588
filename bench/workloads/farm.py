"""Issue 29's farm figure: content ingest from one farm host to another, the route between
their nats-servers TLS (the farm's CA) against plain.

Two pairs of hosts (network namespaces on a bridge of their own, flotilla/testing/netns.py):
on one host of each pair the content service alone with its nats-server; on the other a
client writes a 256 MiB blob through its own nats-server, so every byte crosses the route.
Flotilla only: containerd has no such path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from flotilla.deploy import Suite
from flotilla.deploy.farm import make_ca, make_cert
from flotilla.testing.netns import NATS_PORT as PORT
from flotilla.testing.netns import Host, Network
from flotilla.testing.peers import terminate

from ..harness import Target, Workload

MiB = 1 << 20
SIZE = 256 * MiB
PREFIX = "farmbench"
_WRITER = """
import asyncio, sys, time
from flotilla.libs.api.content import ContentClient
from flotilla.libs.bus import Bus
async def main(url, seed, path, digest, size, ref):
    bus = await Bus.connect(url, "farm-bench", credentials=seed)
    # the other host's content service may still be starting, or the route still forming
    await bus.request("%s.content.ping", None, timeout=30, idempotent=True)
    c = ContentClient(bus, "%s", local=False)
    async def chunks():
        with open(path, "rb") as f:
            while piece := f.read(8 << 20):
                yield piece
    started = time.perf_counter()
    await c.write_blob("bench", ref, chunks(), expected=digest, total=size)
    print(time.perf_counter() - started)
    await c.delete("bench", digest)
    await bus.close()
asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]))
""" % (PREFIX, PREFIX)


class _Pairs:
    """Both pairs of hosts, up for the workload's run."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.stack = contextlib.ExitStack()
        self.writers: dict[str, tuple[Host, Suite]] = {}

    def start(self) -> None:
        farm = self.stack.enter_context(Network(4))
        ca = self.base / "ca"
        make_ca(ca)
        for variant, (store_host, writer_host) in (("TLS route", farm.hosts[:2]), ("plain route", farm.hosts[2:])):
            tls = variant.startswith("TLS")
            suites = {}
            for host, peer in ((store_host, writer_host), (writer_host, store_host)):
                tls_dir = None
                if tls:
                    tls_dir = self.base / host.name / "tls"
                    make_cert(ca, host.name, [host.address], out_dir=tls_dir)
                suite = host.nats_suite(self.base, [peer], tls_dir, PREFIX, "bench")
                self._run(host, ["nats-server", "-c", str(suite.state / "nats.conf")], f"{host.name}-nats")
                suites[host] = suite
            store = suites[store_host]
            env = {**os.environ, **store.env("content"), "FLOTILLA_NATS_URL": f"nats://127.0.0.1:{PORT}",
                   "FLOTILLA_HOST_ID": store_host.name}
            self._run(store_host, [sys.executable, "-m", "flotilla.services.content"], f"{store_host.name}-content",
                      env)
            self.writers[variant] = (writer_host, suites[writer_host])

    def _run(self, host: Host, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        with open(self.base / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(host.command(*argv), stdout=log, stderr=subprocess.STDOUT, env=env)
        self.stack.callback(terminate, proc, 10)

    def write(self, variant: str, path: Path, digest: str, n: int) -> float:
        host, suite = self.writers[variant]
        out = subprocess.run(host.command(sys.executable, "-c", _WRITER, f"nats://127.0.0.1:{PORT}",
                                          str(suite.credentials.seed_file("bench")), str(path), digest, str(SIZE),
                                          f"farm-{n}"), capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return SIZE / float(out.stdout.split()[-1]) / 1e6

    def stop(self) -> None:
        self.stack.close()


_state: dict[str, object] = {}


def _setup(t: Target) -> None:
    base = t.base / "farm"
    base.mkdir(exist_ok=True)
    path = base / "blob"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(SIZE // (8 * MiB)):
            block = os.urandom(8 * MiB)
            h.update(block)
            f.write(block)
    pairs = _Pairs(base)
    digest = "sha256:" + h.hexdigest()
    try:  # the harness tears down only what set up whole
        pairs.start()
        pairs.write("TLS route", path, digest, -1)  # both routes up and warm before measuring
        pairs.write("plain route", path, digest, -2)
    except BaseException:
        pairs.stop()
        raise
    _state.update(pairs=pairs, path=path, digest=digest, n=0)


def _teardown(t: Target) -> None:
    pairs = _state.pop("pairs", None)
    if isinstance(pairs, _Pairs):
        pairs.stop()


def _ingest(t: Target) -> dict[str, float]:
    pairs = _state["pairs"]
    assert isinstance(pairs, _Pairs)
    _state["n"] = n = int(_state["n"]) + 1  # type: ignore[call-overload]
    order = ["TLS route", "plain route"] if n % 2 else ["plain route", "TLS route"]
    return {f"ingest 256 MiB host to host, {v}": pairs.write(v, _state["path"], _state["digest"], n)  # type: ignore[arg-type]
            for v in order}


def workloads() -> list[Workload]:
    return [Workload("farm/content ingest between two hosts", _ingest, repeat=5, unit="MB/s",
                     targets=("flotilla",), setup=_setup, teardown=_teardown, higher_is_better=True)]
