"""A farm of Flotilla hosts on this machine (docs/farm.md), for tests and for people.

``Farm(n)`` builds n hosts: one network namespace each, veth pairs into a bridge that lives
in a namespace of its own (flotilla/testing/netns.py: the machine's own network is never
touched), one nats-server per host clustered over those addresses with TLS under a farm CA,
one PostgreSQL in a namespace of its own for the shared metadata, and on each host a whole
suite with its own state and data directories and host id. ``ctr`` runs inside a host's
namespace against that host's socket. Everything made is removed on exit, also after a
failed test; ``python -m flotilla.testing.farm up N`` / ``down`` (``make farm``) do the same
for a person, the farm's description kept in ``/run/flotilla-farm/farm.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from flotilla.deploy import SERVICES, Suite, running
from flotilla.deploy.credentials import Permissions
from flotilla.deploy.farm import Cluster, make_ca, make_cert

from . import netns, postgres
from .netns import NATS_PORT, ROUTE_PORT, SUBNET, Host, Network
from .images import Image, push
from .peers import CTR, Peer, Registry, _pids_naming, _with_descendants
from .postgres import PostgresServer

PG_PORT = 5432            # inside the database's own namespace
BULK_PORT = 7480          # each host's content copies, on its own address
TESTER = "tester"         # a credential on every host that may say anything (tests' probes)
STATE_FILE = Path("/run/flotilla-farm/farm.json")


@dataclass
class FarmHost:
    index: int
    net: Host
    suite: Suite

    @property
    def id(self) -> str:
        """The host id: the token in its host-local subjects."""
        return f"host{self.index + 1}"

    @property
    def socket(self) -> str:
        return str(self.suite.socket)

    def command(self, *argv: str) -> list[str]:
        """``argv`` run in this host's network namespace."""
        return [*self.suite.enter(), *argv]

    def ctr(self, *args: str, namespace: str = "default", timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Debian's ctr on this host, against this host's socket."""
        return subprocess.run(self.command(CTR, "--address", self.socket, "--namespace", namespace, *args),
                              capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=subprocess.DEVNULL if input is None else None)

    def up(self, timeout: float = 120) -> float:
        return self.suite.up(timeout)

    def lose(self) -> None:
        """Every process of the suite SIGKILLed at once, its nats-server too, as when the
        machine's power goes; the containers' supervisors survive (they do on a real host
        whose Flotilla dies, and here they stand for the host's running work)."""
        victims = [pid for pid in (self.suite.pid(), *self.suite.program_pids()) if pid]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in victims) and time.monotonic() < deadline:
            time.sleep(0.05)

    def tester_seed(self) -> Path:
        return self.suite.credentials.seed_file(TESTER)


@dataclass
class Farm(Peer):
    """``size`` hosts, each running every service; the content store is the farm's (its
    records in the farm's database, its bytes on the hosts' disks), as is the metadata."""
    size: int = 3
    # seconds a host is unheard before its copies are made again (the default is 30)
    host_lost_after: float = 5.0
    tls: bool = True
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flotilla-farm-")))
    prefix: str = field(default_factory=lambda: "farm" + uuid.uuid4().hex[:6])
    hosts: list[FarmHost] = field(default_factory=list)
    network: Network | None = None
    database: PostgresServer | None = None
    db_url: str = ""
    registry: Registry | None = None   # pushed to on loopback, pulled from at ``registry_host``
    registry_host: str = ""

    def start(self, timeout: float = 180) -> None:
        # the registry apart from the database, so that a test may shape its link alone
        self.network = Network(self.size, extra=("db", "registry"))
        self.network.__enter__()
        db_host = self.network.others["db"]
        self.database = PostgresServer(address=db_host.address, port=PG_PORT, netns=db_host.name,
                                       clients=f"{SUBNET}.0/24")
        self.database.start()
        self.db_url = self.database.new_database()
        self.registry = Registry(log_requests=True)  # tests count the blobs it serves
        self.registry.start()
        registry_host = self.network.others["registry"]
        self.registry_host = self.registry.serve_in(registry_host.name, registry_host.address)
        ca = self.base / "ca"
        if self.tls:
            make_ca(ca)
        for net in self.network.hosts:
            self.hosts.append(self._host(len(self.hosts), net, ca))
        with ThreadPoolExecutor(self.size) as pool:  # they come up together: each waits for the others
            list(pool.map(lambda h: h.up(timeout), self.hosts))

    def _host(self, index: int, net: Host, ca: Path) -> FarmHost:
        home = self.base / net.name
        tls_dir = None
        if self.tls:
            tls_dir = home / "tls"
            make_cert(ca, net.name, [net.address], out_dir=tls_dir)
        others = tuple(f"{h.address}:{ROUTE_PORT}" for h in self.network.hosts if h != net)  # type: ignore[union-attr]
        services = tuple(n for n, _ in SERVICES)
        suite = Suite(root=home / "root", state=home / "state", nats_port=NATS_PORT, metrics_base=0,
                      prefix=self.prefix, isolated=True,
                      cluster=Cluster(f"{net.address}:{ROUTE_PORT}", others, tls_dir, cert_name=net.name,
                                      name=self.prefix),
                      instances={}, services=services, netns=net.name,
                      extra_env={"FLOTILLA_HOST_ID": f"host{index + 1}", "FLOTILLA_DB_URL": self.db_url,
                                 "FLOTILLA_CONTENT_DB_URL": self.db_url,
                                 "FLOTILLA_HOST_LOST_AFTER": str(self.host_lost_after),
                                 "FLOTILLA_CONTENT_PEER_LISTEN": f"{net.address}:{BULK_PORT}"})
        suite.credentials.grant(TESTER, Permissions((">",), (">",)))
        return FarmHost(index, net, suite)

    def push(self, repo: str, tag: str, image: Image) -> str:
        """``image`` in the farm's registry; returns the ref the hosts pull (--plain-http)."""
        assert self.registry is not None
        push(self.registry.host, repo, tag, image)
        return f"{self.registry_host}/{repo}:{tag}"

    def stop(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.suite.down()
        if self.registry is not None:
            self.registry.stop()
        _teardown(self.base, self.network.namespaces() if self.network else [],
                  self.database.base if self.database else None, self.registry.base if self.registry else None)
        self.hosts.clear()

    # -- a farm for a person: `make farm N=3`, `make farm-down` -------------------------

    def describe(self) -> dict[str, object]:
        assert self.network is not None and self.database is not None
        return {"base": str(self.base), "size": self.size,
                "namespaces": self.network.namespaces(), "database": str(self.database.base),
                "registry": str(self.registry.base) if self.registry else None,
                "hosts": [{"id": h.id, "netns": h.net.name, "address": h.net.address, "socket": h.socket,
                           "conf": str(h.suite.conf)} for h in self.hosts]}


def _teardown(base: Path, namespaces: list[str], database: Path | None, registry: Path | None) -> None:
    """Whatever the farm under ``base`` left: its suites' processes and the containers'
    supervisors (all name a path under ``base``), their mounts, the registry, the database,
    the namespaces."""
    named = [str(base)] + ([str(registry)] if registry else [])
    for pid in _with_descendants([p for text in named for p in _pids_naming(text)]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if registry is not None:
        shutil.rmtree(registry, ignore_errors=True)
    _unmount_under(base)
    if database is not None:
        postgres.stop_at(database)
    netns.remove(namespaces)
    shutil.rmtree(base, ignore_errors=True)


def _unmount_under(base: Path) -> None:
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(str(base))]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False, capture_output=True)


def _up(size: int) -> None:
    if STATE_FILE.exists():
        sys.exit(f"a farm is up already ({STATE_FILE}); `make farm-down` ends it")
    farm = Farm(size)
    try:
        farm.start()
    except BaseException:
        farm.stop()
        raise
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(farm.describe(), indent=2))
    print(f"a farm of {size} hosts is up; shared metadata on PostgreSQL at {farm.db_url.split('@')[1]}")
    for h in farm.hosts:
        print(f"  {h.id}: ip netns exec {h.net.name} ctr --address {h.socket} images ls"
              f"    (address {h.net.address})")
    assert farm.registry is not None
    print(f"a registry: push to {farm.registry.host} (here), pull from {farm.registry_host} (the hosts, --plain-http)")
    print("`make farm-down` ends it")


def _down() -> None:
    if not STATE_FILE.exists():
        print("no farm is up")
        return
    described = json.loads(STATE_FILE.read_text())
    base = Path(described["base"])
    for h in described["hosts"]:
        with contextlib.suppress(Exception):
            Suite(root=base / h["netns"] / "root", state=base / h["netns"] / "state").down()
    registry = described.get("registry")
    _teardown(base, described["namespaces"], Path(described["database"]), Path(registry) if registry else None)
    STATE_FILE.unlink()
    print("the farm is down")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m flotilla.testing.farm")
    sub = parser.add_subparsers(dest="what", required=True)
    up = sub.add_parser("up", help="start a farm of N hosts on this machine")
    up.add_argument("size", type=int, nargs="?", default=3)
    sub.add_parser("down", help="end the farm `up` started")
    args = parser.parse_args()
    if args.what == "up":
        if not 1 <= args.size <= 50:
            sys.exit("a farm has 1 to 50 hosts here")
        _up(args.size)
    else:
        _down()


if __name__ == "__main__":
    main()
