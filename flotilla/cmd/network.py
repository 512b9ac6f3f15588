"""``flotilla network create|ls|inspect|rm|connect|disconnect|set|interfaces`` and
``flotilla run --net NAME -p HOSTPORT:CTRPORT``, over Flotilla's own gRPC methods
``/flotilla.network.v1.Networks/<Method>`` (msgpack maps; docs/network.md). containerd has
no such API: against it these answer Unimplemented."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgpack
from grpc import aio

from flotilla.client import Client
from flotilla.client._conn import translate
from flotilla.libs.api.network import (
    DEFAULT_NETWORK, LABEL_BANDWIDTH, LABEL_NETWORK, LABEL_PORTS, parse_bandwidth, parse_ports,
)

from ._base import command, json_option, output

SERVICE = "/flotilla.network.v1.Networks/"


async def call(client: Client, method: str, request: dict[str, Any]) -> Any:
    stub = client._conn.channel.unary_unary(SERVICE + method, request_serializer=msgpack.packb,
                                            response_deserializer=msgpack.unpackb)
    try:
        return await stub(request, metadata=client._conn.metadata())
    except aio.AioRpcError as exc:
        raise translate(exc) from None


def _rate(text: str) -> dict[str, int]:
    """``IN[:OUT]`` bits/s with k/m/g -> a Bandwidth map (the service checks it again)."""
    bw = parse_bandwidth(text)  # the same rules as the label's
    return {"ingress_rate": bw.ingress_rate, "egress_rate": bw.egress_rate} if bw else {}


def _ports(items: list[str]) -> list[dict[str, Any]]:
    return [{"host_port": p.host_port, "container_port": p.container_port, "protocol": p.protocol,
             "host_ip": p.host_ip} for p in parse_ports(",".join(items))]


async def create(client: Client, args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"name": args.name, "driver": args.driver, "subnet": args.subnet or "",
                           "gateway": args.gateway or "", "parent": args.parent or "", "mode": args.mode or "",
                           "bridge": args.bridge or "", "mtu": args.mtu, "ip_masq": not args.no_masquerade}
    if args.conflist:
        req["conflist"] = Path(args.conflist).read_text()
    net = await call(client, "Create", req)
    print(net["name"])
    return 0


async def ls(client: Client, args: argparse.Namespace) -> int:
    nets = await call(client, "List", {})
    for n in nets:
        n.pop("conflist", None)
    output(args, nets, ["NAME", "DRIVER", "SUBNET", "GATEWAY", "CONTAINERS"],
           lambda n: [n["name"], n["driver"] or "-", n["subnet"] or "-", n["gateway"] or "-", len(n["containers"])])
    return 0


async def inspect(client: Client, args: argparse.Namespace) -> int:
    out = []
    for name in args.names:
        net = await call(client, "Inspect", {"name": name})
        net["conflist"] = json.loads(net["conflist"])
        out.append(net)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


async def rm(client: Client, args: argparse.Namespace) -> int:
    from flotilla.client import FlotillaError
    status = 0
    for name in args.names:
        try:
            await call(client, "Remove", {"name": name})
            print(name)
        except FlotillaError as exc:
            print(f"flotilla: {name}: {exc.message}", file=sys.stderr)
            status = 1
    return status


def _iface_row(i: dict[str, Any]) -> list[object]:
    return [i["ifname"], i["network"], ",".join(i["addresses"]) or "-", i["mac"] or "-", i["host_ifname"] or "-"]


async def connect(client: Client, args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"container_id": args.id, "network": args.network, "ifname": args.ifname or "",
                           "ports": _ports(args.publish), "mtu": args.mtu}
    if args.rate:
        req["bandwidth"] = _rate(args.rate)
    iface = await call(client, "AddInterface", req)
    output(args, [iface], ["IFNAME", "NETWORK", "ADDRESSES", "MAC", "HOST"], _iface_row)
    return 0


async def disconnect(client: Client, args: argparse.Namespace) -> int:
    await call(client, "RemoveInterface", {"container_id": args.id, "ifname": args.ifname})
    return 0


async def set_(client: Client, args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"container_id": args.id, "ifname": args.ifname, "mtu": args.mtu}
    if args.no_limit:
        req["bandwidth"] = {}
    elif args.rate:
        req["bandwidth"] = _rate(args.rate)
    iface = await call(client, "UpdateInterface", req)
    output(args, [iface], ["IFNAME", "NETWORK", "ADDRESSES", "MAC", "HOST"], _iface_row)
    return 0


async def interfaces(client: Client, args: argparse.Namespace) -> int:
    found = await call(client, "Interfaces", {"container_id": args.id})
    output(args, found, ["IFNAME", "NETWORK", "ADDRESSES", "MAC", "HOST"], _iface_row)
    return 0


def register(sub: Any) -> None:
    net = sub.add_parser("network", help="networks (CNI conflists) and the interfaces of tasks")
    nsub = net.add_subparsers(dest="network_command", required=True)
    p = command(nsub, "create", create, "create a network (a CNI conflist on the server's host)")
    p.add_argument("name")
    p.add_argument("--driver", default="bridge", choices=("bridge", "macvlan", "ipvlan"))
    p.add_argument("--subnet", help="CIDR (bridge: default the next free /24 of 10.91.0.0/16)")
    p.add_argument("--gateway")
    p.add_argument("--parent", help="macvlan/ipvlan: the host interface")
    p.add_argument("--mode", help="macvlan: bridge|private|vepa|passthru; ipvlan: l2|l3|l3s")
    p.add_argument("--bridge", help="the bridge device (default fl-NAME)")
    p.add_argument("--mtu", type=int, default=0)
    p.add_argument("--no-masquerade", action="store_true", help="bridge: no NAT for traffic leaving the subnet")
    p.add_argument("--conflist", help="a CNI conflist file to use as it is (its name must be NAME)")
    p = command(nsub, "ls", ls, "list networks")
    json_option(p)
    p = command(nsub, "inspect", inspect, "show networks as JSON (conflist, containers attached)")
    p.add_argument("names", nargs="+")
    p = command(nsub, "rm", rm, "remove networks (refused while a container uses one)")
    p.add_argument("names", nargs="+")
    p = command(nsub, "connect", connect, "add an interface on NETWORK to a running container")
    p.add_argument("id")
    p.add_argument("network")
    p.add_argument("--ifname", help="default: the next free ethN")
    p.add_argument("-p", "--publish", action="append", default=[], help="[HOSTIP:]HOSTPORT:CTRPORT[/PROTO]")
    p.add_argument("--rate", help="bandwidth limit IN[:OUT] in bits/s (k, m, g)")
    p.add_argument("--mtu", type=int, default=0)
    json_option(p)
    p = command(nsub, "disconnect", disconnect, "remove an interface from a running container")
    p.add_argument("id")
    p.add_argument("ifname")
    p = command(nsub, "set", set_, "change an interface of a running container (bandwidth limit, MTU)")
    p.add_argument("id")
    p.add_argument("ifname")
    p.add_argument("--rate", help="bandwidth limit IN[:OUT] in bits/s (k, m, g)")
    p.add_argument("--no-limit", action="store_true", help="remove the bandwidth limit")
    p.add_argument("--mtu", type=int, default=0)
    json_option(p)
    p = command(nsub, "interfaces", interfaces, "list a container's interfaces")
    p.add_argument("id")
    json_option(p)
    _extend_run(sub)


def _extend_run(sub: Any) -> None:
    """``flotilla run --net NAME -p HOSTPORT:CTRPORT``: the container gets the network labels,
    and the gateway attaches its task when it is created (docs/network.md)."""
    run_parser = sub.choices.get("run")
    if run_parser is None:
        return
    run_parser.add_argument("--net", action="append", default=[],
                            help=f"attach to this network (repeatable; '' = {DEFAULT_NETWORK})")
    run_parser.add_argument("-p", "--publish", action="append", default=[],
                            help="[HOSTIP:]HOSTPORT:CTRPORT[/PROTO] on the first network (repeatable)")
    run_parser.add_argument("--net-rate", help="bandwidth limit IN[:OUT] in bits/s on the first network")
    plain = run_parser.get_default("handler")

    async def run(client: Client, args: argparse.Namespace) -> int:
        if not (args.net or args.publish or args.net_rate):
            return int(await plain(client, args) or 0)
        if args.net_host:
            print("flotilla: --net-host and --net/-p exclude each other", file=sys.stderr)
            return 2
        labels = {LABEL_NETWORK: ",".join(args.net) or DEFAULT_NETWORK}
        if args.publish:
            labels[LABEL_PORTS] = ",".join(args.publish)
        if args.net_rate:
            labels[LABEL_BANDWIDTH] = args.net_rate
        new_container = client.new_container

        async def labelled(*a: Any, **kw: Any) -> Any:  # run's container, with the labels
            return await new_container(*a, **{**kw, "labels": {**(kw.get("labels") or {}), **labels}})

        client.new_container = labelled  # type: ignore[method-assign]
        return int(await plain(client, args) or 0)

    run_parser.set_defaults(handler=run)
