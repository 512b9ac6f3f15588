"""What a container's labels ask for, and the runtimeConfig the plugins get for it."""

from __future__ import annotations

from typing import Any

from flotilla.libs.api.network import (
    DEFAULT_NETWORK, LABEL_BANDWIDTH, LABEL_NETWORK, LABEL_PORTS, Bandwidth, PortMapping, check_ports,
    parse_bandwidth, parse_ports,
)
from flotilla.libs.errors import InvalidArgument

__all__ = ["capabilities", "check_ports", "from_labels", "limited", "networks"]
MIN_BURST = 8 * 1514 * 4  # bits: a few full frames, or tbf cannot send one


def networks(labels: dict[str, str]) -> list[str]:
    names = [n.strip() for n in labels.get(LABEL_NETWORK, "").split(",")]
    names = [n or DEFAULT_NETWORK for n in names] or [DEFAULT_NETWORK]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"label {LABEL_NETWORK}={labels[LABEL_NETWORK]!r}: a network named twice: "
                              "invalid argument")
    return names


def from_labels(labels: dict[str, str]) -> tuple[list[str], list[PortMapping], Bandwidth | None]:
    return networks(labels), parse_ports(labels.get(LABEL_PORTS, "")), parse_bandwidth(labels.get(LABEL_BANDWIDTH, ""))


def limited(bw: Bandwidth | None) -> bool:
    return bw is not None and bool(bw.ingress_rate or bw.egress_rate)


def capabilities(ports: list[PortMapping], bw: Bandwidth | None) -> dict[str, Any]:
    """runtimeConfig by CNI's conventions (portMappings, bandwidth), for the plugins that ask."""
    caps: dict[str, Any] = {}
    if ports:
        caps["portMappings"] = [{"hostPort": p.host_port, "containerPort": p.container_port,
                                 "protocol": p.protocol, **({"hostIP": p.host_ip} if p.host_ip else {})}
                                for p in ports]
    if limited(bw):
        assert bw is not None
        entry: dict[str, int] = {}
        for way in ("ingress", "egress"):
            rate = getattr(bw, f"{way}_rate")
            if rate < 0 or getattr(bw, f"{way}_burst") < 0:
                raise InvalidArgument("bandwidth: rates and bursts are not negative: invalid argument")
            if rate:
                entry[f"{way}Rate"] = rate
                entry[f"{way}Burst"] = getattr(bw, f"{way}_burst") or max(rate // 10, MIN_BURST)
        caps["bandwidth"] = entry
    return caps
