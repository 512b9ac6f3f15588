"""Routes between farm hosts (docs/security.md): mutual TLS under the farm's CA. Hosts are
network namespaces on a bridge of their own; each runs the nats-server a Suite renders."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.deploy import Suite
from flotilla.deploy.farm import make_ca, make_cert
from flotilla.testing.peers import terminate

from flotilla.testing.netns import NATS_PORT as PORT
from flotilla.testing.netns import ROUTE_PORT, Host, Network

pytestmark = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is installed by make test")

PREFIX = "farmtest"
REPO = Path(__file__).resolve().parents[2]


def _host_suite(base: Path, host: Host, routes: list[Host], tls: Path | None) -> Suite:
    return host.nats_suite(base, routes, tls, PREFIX, "tester")


@contextlib.contextmanager
def _running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        terminate(proc, 5)


def _tag(host: Host) -> str:
    return host.name.split("-")[0]


def _probe(host: Host, suite: Suite, mode: str, seconds: float, tag: str) -> list[str]:
    seed = suite.credentials.seed_file("tester")
    return host.command(sys.executable, "-m", "tests.farm.probe", mode, f"nats://127.0.0.1:{PORT}",
                        str(seed), f"{PREFIX}.events", str(seconds), tag)


def test_only_hosts_of_the_farm_ca_join_and_routes_carry_no_plaintext(tmp_path: Path) -> None:
    ca, rogue = tmp_path / "ca", tmp_path / "rogue-ca"
    make_ca(ca)
    make_ca(rogue, "/CN=not the farm")
    with Network(5) as farm, contextlib.ExitStack() as stack:
        a, b, c, d, e = farm.hosts
        for h in (a, b):
            make_cert(ca, h.name, [h.address], out_dir=tmp_path / h.name / "tls")
        make_cert(rogue, c.name, [c.address], out_dir=tmp_path / c.name / "tls")
        suites = {
            a: _host_suite(tmp_path, a, [b], tmp_path / a.name / "tls"),
            b: _host_suite(tmp_path, b, [a], tmp_path / b.name / "tls"),
            c: _host_suite(tmp_path, c, [a, b], tmp_path / c.name / "tls"),  # its own CA: must stay out
            # control: a plain route, to show the capture sees plaintext; d, with no certificate
            # at all, also asks a for a route, which a must refuse
            d: _host_suite(tmp_path, d, [e, a], None),
            e: _host_suite(tmp_path, e, [d], None),
        }
        for h, s in suites.items():
            stack.enter_context(_running(h.command("nats-server", "-c", str(s.state / "nats.conf")),
                                         tmp_path / f"{h.name}.log"))
        pcap = tmp_path / "bridge.pcap"
        stack.enter_context(_running(["ip", "netns", "exec", farm.bridge_ns, "tcpdump", "-i", "any", "-U", "-n",
                                      "-w", str(pcap), "tcp", "port", str(ROUTE_PORT)], tmp_path / "tcpdump.log"))
        listeners = {h: subprocess.Popen(_probe(h, suites[h], "sub", 8, ""), cwd=REPO, stdout=subprocess.PIPE,
                                         text=True) for h in (a, c, e)}
        for proc in listeners.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        talkers = [subprocess.Popen(_probe(h, suites[h], "pub", 4, _tag(h)), cwd=REPO) for h in (b, c, d)]
        for proc in talkers:
            assert proc.wait(30) == 0
        heard = {h: proc.communicate(timeout=30)[0].split() for h, proc in listeners.items()}
        time.sleep(0.5)  # tcpdump writes its last packets (-U: at once, each)

    tag = {h: _tag(h) + "-secret" for h in (b, c, d)}
    assert any(m.startswith(tag[b]) for m in heard[a]), heard[a]        # the farm's hosts talk
    assert not any(m.startswith(tag[c]) for m in heard[a]), heard[a]    # the stranger is not heard
    assert not any(m.startswith(tag[d]) for m in heard[a]), heard[a]    # nor a host with no TLS
    assert not any(m.startswith(tag[b]) for m in heard[c]), heard[c]    # ... and hears nothing
    assert any(m.startswith(tag[d]) for m in heard[e]), heard[e]        # the control pair talks
    captured = pcap.read_bytes()
    assert tag[d].encode() in captured and PREFIX.encode() in captured  # so the capture sees plaintext
    assert tag[b].encode() not in captured                              # ... and the farm's is TLS
    assert "TLS" in (tmp_path / f"{a.name}.log").read_text() + (tmp_path / f"{c.name}.log").read_text()

