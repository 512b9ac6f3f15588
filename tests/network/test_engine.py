"""The network engine without NATS, with Debian's CNI plugins, in a namespace of the test's
own (the "host"): networks as conflists, attach/detach, interfaces changed on a running
process, and recovery from a service killed half-way."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from flotilla.libs.api.network import (
    LABEL_BANDWIDTH, LABEL_NETWORK, LABEL_PORTS, Bandwidth, InterfaceAdd, InterfaceUpdate, NetworkSpec,
)
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flotilla.services.network import options
from flotilla.services.network.cni import Call, plugin_config
from flotilla.services.network.engine import Engine
from flotilla.services.network.netns import is_pinned
from flotilla.services.network.store import ADDING, IfaceRecord, cni_id

from .conftest import Sandboxes
from .helpers import Host, allocations, mounts_under

NET = "alpha"


def inside(pid: int, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """busybox ``argv`` in process ``pid``'s network namespace."""
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "busybox", *argv], capture_output=True,
                          text=True, check=check, timeout=30)


def leftovers(engine: Engine, host: Host, ids: list[str], addresses: list[str]) -> dict[str, object]:
    """What the attachments of ``ids`` could have left behind; all empty when nothing was."""
    rules = host.rules()
    return {"veths": host.links("veth"), "ifbs": host.links("ifb"),
            "allocations": allocations(engine.networks.ipam_dir), "records": engine.records.all(),
            "pins": sorted(os.listdir(engine.pins)) if engine.pins.exists() else [],
            "mounts": mounts_under(engine.pins.parent),
            "rules": [line for line in rules.splitlines() if any(x in line for x in ids + addresses)],
            "tuning": sorted(os.listdir(engine.tuning_dir)) if engine.tuning_dir.exists() else []}


CLEAN = {"veths": [], "ifbs": [], "allocations": [], "records": [], "pins": [], "mounts": [], "rules": [], "tuning": []}


def test_networks_are_conflists_and_bad_ones_are_refused(engine: Engine) -> None:
    created = engine.create_network(NetworkSpec(NET))
    assert (created.driver, created.subnet, created.gateway) == ("bridge", "10.91.0.0/24", "")
    on_disk = json.loads(Path(created.file).read_text())
    assert [p["type"] for p in on_disk["plugins"]] == ["bridge", "portmap", "firewall", "bandwidth"]
    assert on_disk["plugins"][0]["bridge"] == "fl-alpha" and "dataDir" not in on_disk["plugins"][0]["ipam"]
    assert [n.name for n in engine.list_networks()] == [NET]
    with pytest.raises(AlreadyExists):
        engine.create_network(NetworkSpec(NET))
    files = sorted(os.listdir(engine.networks.dir))
    bad = {
        "bad name": NetworkSpec("no spaces"),
        "not JSON": NetworkSpec("b1", conflist="{not json"),
        "no plugins": NetworkSpec("b2", conflist=json.dumps({"cniVersion": "1.0.0", "name": "b2"})),
        "unknown plugin": NetworkSpec("b3", conflist=json.dumps(
            {"cniVersion": "1.0.0", "name": "b3", "plugins": [{"type": "nosuch"}]})),
        "unknown version": NetworkSpec("b4", conflist=json.dumps(
            {"cniVersion": "9.9.9", "name": "b4", "plugins": [{"type": "bridge"}]})),
        "other name": NetworkSpec("b5", conflist=json.dumps(
            {"cniVersion": "1.0.0", "name": "zzz", "plugins": [{"type": "bridge"}]})),
        "overlap": NetworkSpec("b6", subnet="10.91.0.128/25"),
        "same bridge": NetworkSpec("b7", subnet="10.93.0.0/24", bridge="fl-alpha"),
        "gateway outside": NetworkSpec("b8", subnet="10.94.0.0/24", gateway="10.95.0.1"),
        "macvlan without parent": NetworkSpec("b9", driver="macvlan", subnet="10.96.0.0/24"),
        "ipvlan bad mode": NetworkSpec("b10", driver="ipvlan", parent="eth0", subnet="10.96.0.0/24", mode="x"),
        "driver": NetworkSpec("b11", driver="overlay"),
    }
    for why, spec in bad.items():
        with pytest.raises(InvalidArgument) as err:
            engine.create_network(spec)
        assert err.value.message.endswith("invalid argument"), why
    assert "nosuch" in _message(engine, bad["unknown plugin"]) and "overlaps" in _message(engine, bad["overlap"])
    assert sorted(os.listdir(engine.networks.dir)) == files  # nothing was written
    with pytest.raises(NotFound, match="network 'nope': not found"):
        engine.inspect_network("nope")
    with pytest.raises(NotFound):
        engine.remove_network("nope")
    # an operator's conflist works as it is; a broken file is skipped, not fatal
    (engine.networks.dir / "90-ops.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "ops", "plugins": [
            {"type": "bridge", "bridge": "ops0", "ipam": {"type": "host-local", "subnet": "10.97.0.0/24"}}]}))
    (engine.networks.dir / "91-broken.conf").write_text("{")
    assert [n.name for n in engine.list_networks()] == [NET, "ops"]
    assert engine.inspect_network("ops").subnet == "10.97.0.0/24"
    # the default network is made when first asked for
    default = engine.inspect_network("flotilla")
    assert (default.subnet, json.loads(default.conflist)["plugins"][0]["bridge"]) == ("10.90.0.0/16", "flotilla0")
    engine.remove_network(NET)
    assert [n.name for n in engine.list_networks()] == ["flotilla", "ops"]


def _message(engine: Engine, spec: NetworkSpec) -> str:
    try:
        engine.create_network(spec)
    except InvalidArgument as exc:
        return exc.message
    raise AssertionError("accepted")


def test_two_tasks_on_a_bridge_reach_each_other_and_leave_nothing(engine: Engine, host: Host,
                                                                 sandboxes: Sandboxes) -> None:
    engine.create_network(NetworkSpec(NET, subnet="10.91.7.0/24"))
    a, b = sandboxes.start(), sandboxes.start()
    ia = engine.attach("ns1", "a", a, {LABEL_NETWORK: NET, LABEL_PORTS: "8080:80"})
    ib = engine.attach("ns1", "b", b, {LABEL_NETWORK: NET})
    assert [(i.ifname, i.network) for i in ia + ib] == [("eth0", NET), ("eth0", NET)]
    addr_a, addr_b = ia[0].addresses[0].split("/")[0], ib[0].addresses[0].split("/")[0]
    assert addr_a.startswith("10.91.7.") and addr_b.startswith("10.91.7.") and addr_a != addr_b
    assert ia[0].gateway == "10.91.7.1" and ia[0].host_ifname in host.links("veth")
    assert f"inet {ia[0].addresses[0]}" in inside(a, "ip", "-o", "addr", "show", "eth0").stdout
    assert inside(a, "ping", "-c", "1", "-W", "5", addr_b).returncode == 0
    assert "--to-destination " + addr_a + ":80" in host.rules()
    # a call sent again (the gateway's, after a restart) gets what the first made
    assert [i.addresses for i in engine.attach("ns1", "a", a, {LABEL_NETWORK: NET})] == [ia[0].addresses]
    assert len(allocations(engine.networks.ipam_dir)) == 2 and len(engine.records.all()) == 2
    with pytest.raises(FailedPrecondition, match="in use by 2 container"):
        engine.remove_network(NET)
    assert sorted(engine.inspect_network(NET).containers) == ["ns1/a", "ns1/b"]
    assert engine.detach("ns1", "a", pid=b) is False  # another process's: not this task's
    assert engine.detach("ns1", "a") and engine.detach("ns1", "b")
    assert leftovers(engine, host, [cni_id("ns1", "a"), cni_id("ns1", "b")], [addr_a, addr_b]) == CLEAN
    engine.remove_network(NET)
    assert "fl-" + NET not in host.links()


def test_a_failed_attach_leaves_nothing(engine: Engine, host: Host, sandboxes: Sandboxes) -> None:
    pid = sandboxes.start()
    with pytest.raises(NotFound, match="network 'nope'"):
        engine.attach("ns1", "c", pid, {LABEL_NETWORK: "nope"})
    with pytest.raises(InvalidArgument, match="port mapping"):
        engine.attach("ns1", "c", pid, {LABEL_NETWORK: NET, LABEL_PORTS: "80"})
    with pytest.raises(FailedPrecondition, match="host's network namespace"):
        engine.attach("ns1", "c", os.getpid(), {LABEL_NETWORK: "flotilla"})  # this thread is in the host's
    with pytest.raises(NotFound, match="process"):
        engine.attach("ns1", "c", 2**22 + 7, {LABEL_NETWORK: "flotilla"})
    # a conflist whose second plugin fails: the first one's veth and address are undone
    engine.create_network(NetworkSpec("half", conflist=json.dumps({"cniVersion": "1.0.0", "name": "half", "plugins": [
        {"type": "bridge", "bridge": "fl-half", "ipam": {"type": "host-local", "subnet": "10.98.0.0/24"}},
        {"type": "bandwidth", "ingressRate": 1000}]})))  # a rate without a burst: refused by the plugin
    with pytest.raises(FailedPrecondition, match="cni plugin bandwidth failed"):
        engine.attach("ns1", "c", pid, {LABEL_NETWORK: "half"})
    assert engine.attach("ns1", "d", pid, {}) == []  # no label: nothing to do
    assert leftovers(engine, host, [cni_id("ns1", "c")], ["10.98.0.2"]) == CLEAN


def test_interfaces_are_added_changed_and_removed_on_a_running_task(engine: Engine, host: Host,
                                                                    sandboxes: Sandboxes) -> None:
    engine.create_network(NetworkSpec(NET))
    engine.create_network(NetworkSpec("beta"))
    pid = sandboxes.start()
    eth0 = engine.add_interface(InterfaceAdd("ns1", "t", pid, NET, bandwidth=Bandwidth(ingress_rate=2_000_000)))
    eth1 = engine.add_interface(InterfaceAdd("ns1", "t", pid, "beta", mtu=1400))
    assert (eth0.ifname, eth1.ifname) == ("eth0", "eth1")
    with pytest.raises(AlreadyExists):
        engine.add_interface(InterfaceAdd("ns1", "t", pid, "beta", ifname="eth1"))
    links = inside(pid, "ip", "-o", "link").stdout
    assert "eth1@" in links and "mtu 1400" in links.split("eth1@")[1].splitlines()[0]
    assert "rate 2Mbit" in host.run("tc", "qdisc", "show", "dev", eth0.host_ifname).stdout
    # changed: the limit, both ways, then none; the MTU twice
    engine.update_interface(InterfaceUpdate("ns1", "t", "eth0", Bandwidth(ingress_rate=5_000_000,
                                                                            egress_rate=3_000_000)))
    assert "rate 5Mbit" in host.run("tc", "qdisc", "show", "dev", eth0.host_ifname).stdout
    assert any("rate 3Mbit" in host.run("tc", "qdisc", "show", "dev", ifb).stdout for ifb in host.links("ifb"))
    engine.update_interface(InterfaceUpdate("ns1", "t", "eth0", Bandwidth()))
    assert "tbf" not in host.run("tc", "qdisc", "show", "dev", eth0.host_ifname).stdout and host.links("ifb") == []
    for mtu in (1300, 1280):
        engine.update_interface(InterfaceUpdate("ns1", "t", "eth1", mtu=mtu))
        assert f"mtu {mtu}" in inside(pid, "ip", "-o", "link", "show", "eth1").stdout
    with pytest.raises(NotFound):
        engine.update_interface(InterfaceUpdate("ns1", "t", "eth7", mtu=1300))
    with pytest.raises(InvalidArgument):
        engine.update_interface(InterfaceUpdate("ns1", "t", "eth1", mtu=20))
    engine.remove_interface("ns1", "t", "eth1")
    engine.remove_interface("ns1", "t", "eth1")  # sent again: done already
    assert "eth1" not in inside(pid, "ip", "-o", "link").stdout
    assert [i.ifname for i in engine.interfaces("ns1", "t")] == ["eth0"]
    engine.update_interface(InterfaceUpdate("ns1", "t", "eth0", Bandwidth(ingress_rate=1_000_000)))
    engine.remove_interface("ns1", "t", "eth0")  # the last one: the namespace is let go too
    assert leftovers(engine, host, [cni_id("ns1", "t")], []) == CLEAN


def test_macvlan_network_on_a_parent_interface(engine: Engine, host: Host, sandboxes: Sandboxes) -> None:
    host.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
    host.run("ip", "link", "set", "up0", "up")
    host.run("ip", "link", "set", "up1", "up")  # a veth has carrier once both ends are up
    engine.create_network(NetworkSpec("mv", driver="macvlan", parent="up0", subnet="10.92.0.0/24"))
    a, b = sandboxes.start(), sandboxes.start()
    ia = engine.attach("ns1", "a", a, {LABEL_NETWORK: "mv"})
    ib = engine.attach("ns1", "b", b, {LABEL_NETWORK: "mv"})
    assert ia[0].host_ifname == "" and "macvlan" in subprocess.run(
        ["nsenter", f"--net=/proc/{a}/ns/net", "ip", "-d", "link", "show", "eth0"], capture_output=True, text=True).stdout
    assert inside(a, "ping", "-c", "1", "-W", "5", ib[0].addresses[0].split("/")[0]).returncode == 0
    with pytest.raises(FailedPrecondition, match="veth"):
        engine.update_interface(InterfaceUpdate("ns1", "a", "eth0", Bandwidth(ingress_rate=1_000_000)))
    engine.detach("ns1", "a")
    engine.detach("ns1", "b")
    host.run("ip", "link", "del", "up0")
    assert leftovers(engine, host, [], []) == CLEAN


def test_recovery_undoes_what_a_killed_service_left(engine: Engine, host: Host, sandboxes: Sandboxes,
                                                    tmp_path: Path) -> None:
    """A service killed in the middle of a chain (bridge and firewall run: a veth, an address,
    masquerade and forwarding rules; the record still says "adding"), a detach answered but
    not done, a task that exited while the service was down, and a namespace held for no
    record: a new engine on the same directories undoes all."""
    engine.create_network(NetworkSpec(NET))
    half, gone, kept, marked = sandboxes.start(), sandboxes.start(), sandboxes.start(), sandboxes.start()
    rec, _ = engine._record("ns1", "half", half)
    engine._pin(rec)
    conflist = engine.networks.prepared(engine.networks.get(NET)[1])
    rec.interfaces.append(IfaceRecord(NET, "eth0", ADDING, conflist))
    engine.records.put(rec)
    call = Call(cni_id("ns1", "half"), rec.netns, "eth0")
    made = engine.plugins.exec("bridge", "ADD", call, plugin_config(conflist, conflist["plugins"][0], call, None))
    assert made is not None
    rec.interfaces[0].result = made  # as the engine records each plugin's result
    engine.records.put(rec)
    firewall = conflist["plugins"][2]
    assert firewall["type"] == "firewall"
    engine.plugins.exec("firewall", "ADD", call, plugin_config(conflist, firewall, call, made))
    half_address = made["ips"][0]["address"].split("/")[0]
    assert len(host.links("veth")) == 1 and "MASQUERADE" in host.rules() and f"-s {half_address}/32" in host.rules()
    engine.attach("ns1", "gone", gone, {LABEL_NETWORK: NET, LABEL_BANDWIDTH: "1m"})
    kept_ifaces = engine.attach("ns1", "kept", kept, {LABEL_NETWORK: NET})
    engine.attach("ns1", "marked", marked, {LABEL_NETWORK: NET})
    assert engine.begin_detach("ns1", "marked")  # answered: killed before its DEL ran
    sandboxes.stop(gone)
    stray = engine.pins / "stray"
    from flotilla.services.network.netns import pin
    pin(kept, stray)
    again = Engine(tmp_path / "root", tmp_path / "state")
    assert again.recover() == 3
    assert not stray.exists() and [r.container_id for r in again.records.all()] == ["kept"]
    assert host.links("veth") == [kept_ifaces[0].host_ifname] and host.links("ifb") == []
    assert len(allocations(engine.networks.ipam_dir)) == 1
    assert is_pinned(Path(again.records.all()[0].netns))
    assert inside(kept, "ip", "-o", "addr", "show", "eth0").returncode == 0  # untouched
    # the sweep releases a task whose process has exited
    sandboxes.stop(kept)
    assert again.sweep() == 1
    assert leftovers(again, host, [cni_id("ns1", x) for x in ("half", "gone", "kept", "marked")],
                     [half_address + "/"]) == CLEAN


def test_labels() -> None:
    assert options.from_labels({LABEL_NETWORK: ""})[0] == ["flotilla"]
    names, ports, bw = options.from_labels({LABEL_NETWORK: "a,b", LABEL_PORTS: "8080:80, 127.0.0.1:53:53/udp",
                                            LABEL_BANDWIDTH: "10m:2m"})
    assert names == ["a", "b"] and bw == Bandwidth(ingress_rate=10_000_000, egress_rate=2_000_000)
    caps = options.capabilities(ports, bw)
    assert caps["portMappings"] == [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                                    {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]
    assert caps["bandwidth"] == {"ingressRate": 10_000_000, "ingressBurst": 1_000_000,
                                 "egressRate": 2_000_000, "egressBurst": 200_000}
    for labels in ({LABEL_NETWORK: "a,a"}, {LABEL_NETWORK: "a", LABEL_PORTS: "70000:80"},
                   {LABEL_NETWORK: "a", LABEL_PORTS: "x:80"}, {LABEL_NETWORK: "a", LABEL_BANDWIDTH: "fast"}):
        with pytest.raises(InvalidArgument):
            options.from_labels(labels)
