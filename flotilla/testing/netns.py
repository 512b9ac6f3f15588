"""Hosts of a farm simulated on this machine: one network namespace per host, veth pairs
into a bridge that lives in a namespace of its own. Nothing is added to the root
namespace's network, and everything made is removed on exit, also after a failure."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flotilla.deploy import Suite
from flotilla.deploy.credentials import Permissions
from flotilla.deploy.farm import Cluster

SUBNET = "10.231.7"  # addresses inside this farm's own namespaces only (a /24)
NATS_PORT, ROUTE_PORT = 4222, 6222  # each host's own, inside its namespace


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Host:
    name: str       # the network namespace
    address: str    # on the farm's bridge

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def nats_suite(self, base: Path, routes: list["Host"], tls: Path | None, prefix: str, user: str) -> Suite:
        """This host's suite under ``base``, its nats-server's configuration rendered as
        ``flotilla up`` renders it for a farm (routes to ``routes``, TLS from ``tls``), with
        a credential ``user`` that may say anything."""
        cluster = Cluster(f"{self.address}:{ROUTE_PORT}", tuple(f"{r.address}:{ROUTE_PORT}" for r in routes),
                          tls, cert_name=self.name)
        suite = Suite(root=base / self.name / "root", state=base / self.name / "state", nats_port=NATS_PORT,
                      metrics_base=0, prefix=prefix, isolated=True, cluster=cluster)
        suite.state.mkdir(parents=True)
        suite.credentials.grant(user, Permissions((">",), (">",)))
        suite.render_nats()
        return suite


@dataclass
class Network:
    """``size`` hosts' namespaces on one bridge, in a namespace of its own; ``extra`` names
    more namespaces on the bridge (a database's), after the hosts' addresses."""
    size: int
    extra: tuple[str, ...] = ()
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hosts: list[Host] = field(default_factory=list)
    others: dict[str, Host] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)  # every namespace added, configured or not

    @property
    def bridge_ns(self) -> str:
        return f"flbr-{self.tag}"

    def __enter__(self) -> "Network":
        try:
            ip("netns", "add", self.bridge_ns)
            self.made.append(self.bridge_ns)
            ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for i in range(self.size):
                self.hosts.append(self._attach(f"flh{i}-{self.tag}", i))
            for j, name in enumerate(self.extra):
                self.others[name] = self._attach(f"fl{name}-{self.tag}", self.size + j)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _attach(self, ns: str, index: int) -> Host:
        host = Host(ns, f"{SUBNET}.{index + 1}")
        ip("netns", "add", ns)
        self.made.append(ns)
        port = f"p{index}"  # the bridge's end, made in the bridge's namespace
        ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return host

    def namespaces(self) -> list[str]:
        """Every namespace made, the bridge's last."""
        return [ns for ns in self.made if ns != self.bridge_ns] + [ns for ns in self.made if ns == self.bridge_ns]

    def __exit__(self, *exc: object) -> None:
        remove(self.namespaces())


def remove(namespaces: list[str]) -> None:
    """Delete network namespaces, ending the processes left in them first."""
    for ns in namespaces:
        left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in left:  # a test's processes are its to stop; these are strays
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth ends go with it
