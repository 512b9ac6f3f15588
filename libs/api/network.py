"""The network service's contract: host-local subjects, records, and its client over the bus.

Subjects are ``<prefix>.network.<host>.<method>``: a network namespace, a bridge and an
iptables rule live on one host. Networks are CNI conflists in a directory of that host
(docs/network.md); a task's interfaces are made by the CNI plugins in its network namespace.

A container is attached when its task is created if it carries ``LABEL_NETWORK`` (the
gateway calls ``tasks.attach`` with its labels) and detached when the task is deleted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .. import subjects
from ..errors import InvalidArgument
from ..routes import Route, method_name

if TYPE_CHECKING:  # the bus (nats) is not imported for a contract's records and subjects
    from ..bus import Bus

SERVICE = "network"
R = TypeVar("R")

# container labels read at task create (docs/network.md)
LABEL_NETWORK = "flotilla.network"              # NAME[,NAME...]: one interface each, eth0, eth1...
LABEL_PORTS = "flotilla.network.ports"          # [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp][,...] on the first
LABEL_BANDWIDTH = "flotilla.network.bandwidth"  # INGRESS[:EGRESS] bits/s (k, m, g suffixes) on the first
DEFAULT_NETWORK = "flotilla"                    # made on first use: a bridge with masquerading


def stem(prefix: str, host: str) -> str:
    """Where one host's network service serves its routes: ``<prefix>.network.<host>``."""
    return subjects.stem(prefix, SERVICE, host)


def subject(prefix: str, host: str, method: Route[Any, Any] | str) -> str:
    return f"{stem(prefix, host)}.{method_name(method)}"


def wants_network(labels: dict[str, str]) -> bool:
    """Whether a container with these labels is attached when its task is created."""
    return LABEL_NETWORK in labels


@dataclass
class NetworkSpec:
    """A network to create: the fields below, or a whole CNI conflist (``conflist``, JSON)."""
    name: str
    driver: str = "bridge"          # bridge | macvlan | ipvlan
    subnet: str = ""                # CIDR; "" = the next free /24 of 10.91.0.0/16 (bridge only)
    gateway: str = ""               # "" = the subnet's first address
    parent: str = ""                # macvlan/ipvlan: the host interface they sit on
    mode: str = ""                  # macvlan: bridge|private|vepa|passthru; ipvlan: l2|l3|l3s
    bridge: str = ""                # the bridge device ("" = derived from the name)
    mtu: int = 0                    # 0 = the kernel's default
    ip_masq: bool = True            # masquerade traffic leaving the subnet (bridge)
    conflist: str = ""              # a CNI conflist as text, used as it is


@dataclass
class Network:
    name: str
    file: str                       # the conflist on this host
    conflist: str                   # its text
    driver: str = ""                # the first plugin's type
    subnet: str = ""
    gateway: str = ""
    containers: list[str] = field(default_factory=list)  # "<namespace>/<id>" attached now


@dataclass
class NameRequest:
    name: str


@dataclass
class ListRequest:
    pass


@dataclass
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass
class Bandwidth:
    """Limits in bits per second (0: none) and bursts in bits (0: a tenth of a second's worth)."""
    ingress_rate: int = 0           # into the container
    ingress_burst: int = 0
    egress_rate: int = 0            # out of the container
    egress_burst: int = 0


@dataclass
class Interface:
    """One interface of a task, made by one network's plugins."""
    namespace: str
    container_id: str
    network: str
    ifname: str
    pid: int = 0                    # the task's process whose namespace it is in
    netns: str = ""                 # where that namespace is held while attached
    addresses: list[str] = field(default_factory=list)  # CIDRs, e.g. 10.91.0.2/24
    gateway: str = ""
    mac: str = ""
    host_ifname: str = ""           # the host's end of a veth, if any
    ports: list[PortMapping] = field(default_factory=list)
    bandwidth: Bandwidth | None = None
    mtu: int = 0
    result: str = ""                # the chain's CNI result (JSON)


@dataclass
class AttachTask:
    """The gateway, once a task is created: attach it as its container's labels say."""
    namespace: str
    container_id: str
    pid: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskRef:
    namespace: str
    container_id: str
    pid: int = 0                    # only if the attachment is this process's (0: whichever)


@dataclass
class InterfaceAdd:
    namespace: str
    container_id: str
    pid: int                        # the running task's process
    network: str
    ifname: str = ""                # "" = the next free ethN
    ports: list[PortMapping] = field(default_factory=list)
    bandwidth: Bandwidth | None = None
    mtu: int = 0


@dataclass
class InterfaceUpdate:
    namespace: str
    container_id: str
    ifname: str
    bandwidth: Bandwidth | None = None   # None: unchanged; all zeros: no limit
    mtu: int = 0                         # 0: unchanged


@dataclass
class InterfaceRef:
    namespace: str
    container_id: str
    ifname: str


# -- the labels' values (also the CLI's -p and --rate) --------------------------------------

_PORT = re.compile(r"^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):)?(?P<host>\d+):(?P<ctr>\d+)(?:/(?P<proto>tcp|udp|sctp))?$")
_RATE = re.compile(r"^(\d+)([kmgKMG]?)$")


def parse_ports(text: str) -> list[PortMapping]:
    """``[HOSTIP:]HOSTPORT:CTRPORT[/PROTO]``, comma-separated, as ``-p`` takes them."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        m = _PORT.match(item)
        if m is None:
            raise InvalidArgument(f"port mapping {item!r}: expected [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp|sctp]: "
                                  "invalid argument")
        out.append(PortMapping(int(m["host"]), int(m["ctr"]), m["proto"] or "tcp", (m["ip"] or "").strip("[]")))
    check_ports(out)
    return out


def check_ports(ports: list[PortMapping]) -> None:
    for p in ports:
        if not (0 < p.host_port < 65536 and 0 < p.container_port < 65536):
            raise InvalidArgument(f"port mapping {p.host_port}:{p.container_port}: ports are 1-65535: "
                                  "invalid argument")
        if p.protocol not in ("tcp", "udp", "sctp"):
            raise InvalidArgument(f"port mapping protocol {p.protocol!r}: tcp, udp or sctp: invalid argument")
        if p.host_ip:
            try:
                ipaddress.ip_address(p.host_ip)
            except ValueError:
                raise InvalidArgument(f"port mapping host address {p.host_ip!r}: invalid argument") from None


def parse_rate(text: str) -> int:
    m = _RATE.match(text.strip())
    if m is None:
        raise InvalidArgument(f"rate {text!r}: bits per second, with an optional k, m or g: invalid argument")
    return int(m[1]) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m[2].lower()]


def parse_bandwidth(text: str) -> Bandwidth | None:
    """``INGRESS[:EGRESS]`` rates (``EGRESS`` defaults to ``INGRESS``)."""
    if not text.strip():
        return None
    ingress, _, egress = text.partition(":")
    return Bandwidth(ingress_rate=parse_rate(ingress), egress_rate=parse_rate(egress or ingress))


# Reads are idempotent; the others carry a request id (done once). Plugins may wait on the
# iptables lock, so changes get more than the default deadline.
CREATE: Route[NetworkSpec, Network] = Route("networks.create", NetworkSpec, Network, timeout=30.0)
LIST: Route[ListRequest, list[Network]] = Route("networks.list", ListRequest, list[Network], idempotent=True)
INSPECT: Route[NameRequest, Network] = Route("networks.inspect", NameRequest, Network, idempotent=True)
REMOVE: Route[NameRequest, None] = Route("networks.remove", NameRequest, None, timeout=30.0)
ATTACH: Route[AttachTask, list[Interface]] = Route("tasks.attach", AttachTask, list[Interface], timeout=120.0)
DETACH: Route[TaskRef, None] = Route("tasks.detach", TaskRef, None, idempotent=True, timeout=120.0)
INTERFACES: Route[TaskRef, list[Interface]] = Route("interfaces.list", TaskRef, list[Interface], idempotent=True)
ADD: Route[InterfaceAdd, Interface] = Route("interfaces.add", InterfaceAdd, Interface, timeout=120.0)
UPDATE: Route[InterfaceUpdate, Interface] = Route("interfaces.update", InterfaceUpdate, Interface, timeout=60.0)
DEL: Route[InterfaceRef, None] = Route("interfaces.remove", InterfaceRef, None, idempotent=True, timeout=60.0)

ROUTES: tuple[Route[Any, Any], ...] = (CREATE, LIST, INSPECT, REMOVE, ATTACH, DETACH, INTERFACES, ADD, UPDATE, DEL)


class NetworkClient:
    """Calls one host's network service."""

    def __init__(self, bus: Bus, prefix: str, host: str) -> None:
        self.bus, self.prefix, self.host = bus, prefix, host

    async def _call(self, route: Route[Any, R], request: object, timeout: float | None) -> R:
        return await self.bus.call(subject(self.prefix, self.host, route), route, request,
                                   timeout=timeout or route.timeout)

    async def create(self, spec: NetworkSpec, timeout: float | None = None) -> Network:
        return await self._call(CREATE, spec, timeout)

    async def list(self, timeout: float | None = None) -> list[Network]:
        return await self._call(LIST, ListRequest(), timeout)

    async def inspect(self, name: str, timeout: float | None = None) -> Network:
        return await self._call(INSPECT, NameRequest(name), timeout)

    async def remove(self, name: str, timeout: float | None = None) -> None:
        await self._call(REMOVE, NameRequest(name), timeout)

    async def attach(self, req: AttachTask, timeout: float | None = None) -> list[Interface]:
        return await self._call(ATTACH, req, timeout)

    async def detach(self, namespace: str, container_id: str, pid: int = 0, timeout: float | None = None) -> None:
        await self._call(DETACH, TaskRef(namespace, container_id, pid), timeout)

    async def interfaces(self, namespace: str, container_id: str, timeout: float | None = None) -> list[Interface]:
        return await self._call(INTERFACES, TaskRef(namespace, container_id), timeout)

    async def add_interface(self, req: InterfaceAdd, timeout: float | None = None) -> Interface:
        return await self._call(ADD, req, timeout)

    async def update_interface(self, req: InterfaceUpdate, timeout: float | None = None) -> Interface:
        return await self._call(UPDATE, req, timeout)

    async def remove_interface(self, namespace: str, container_id: str, ifname: str,
                               timeout: float | None = None) -> None:
        await self._call(DEL, InterfaceRef(namespace, container_id, ifname), timeout)
