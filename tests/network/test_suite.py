"""The network service in a whole suite, driven by Debian's ctr and the flotilla CLI, with the
real CNI plugins, crun and iptables, all inside a network namespace of the test's own: labelled
containers attached server-side, ports, errors, joined namespaces, ``ctr run --cni`` beside
containerd, a bandwidth limit measured, and many networked runs with the service SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from flotilla.libs.api.network import LABEL_NETWORK, LABEL_PORTS
from flotilla.libs.errors import FailedPrecondition, InvalidArgument, NotFound
from flotilla.services.network.options import MIN_BURST

from flotilla.testing import CTR, Registry, ctr
from flotilla.testing.images import Entry, build_image, busybox_entries, push

from .helpers import Host, wait_for
from .suite import CLEAN, NetSuite, build_rootfs, started

NET = "tnet"
SUBNET = "10.91.9"      # the test's bridge network; its gateway address is the host's end
CTR_PATH = CTR


@pytest.fixture(scope="module")
def world() -> Iterator[Host]:
    with Host("flnets") as h:
        yield h


@pytest.fixture(scope="module")
def ns(world: Host) -> Iterator[NetSuite]:
    with started(world) as s:
        yield s


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rootfs(tmp_path_factory.mktemp("netrootfs") / "rootfs")


@pytest.fixture(scope="module")
def network(ns: NetSuite, rootfs: Path) -> Iterator[str]:
    """The tests' bridge network, used once (ports too): the chains the plugins share (made
    on first use, kept, as for any CNI runtime) are in every test's "before"."""
    out = ns.cli("network", "create", NET, "--subnet", f"{SUBNET}.0/24")
    assert out.returncode == 0, out.stderr
    ok(ns.ctr("run", "--rm", "--label", f"{LABEL_NETWORK}={NET}", "--label", f"{LABEL_PORTS}=18080:80",
              "--rootfs", str(rootfs), "warm", "/bin/true"))
    yield NET


@pytest.fixture(scope="module")
def image(ns: NetSuite) -> Iterator[str]:
    """busybox with ip and nc, pulled into the suite by ctr from a registry on this machine's
    loopback (ctr runs outside the host's namespace for that: only the socket is shared)."""
    extra = [Entry(f"bin/{a}", "symlink", target="busybox") for a in ("ip", "nc", "ping")]
    with Registry() as registry:
        push(registry.host, "netbox", "v1", build_image([busybox_entries() + extra]))
        ref = f"{registry.host}/netbox:v1"
        ok(ctr(ns.address, "image", "pull", "--plain-http", ref, timeout=120))
        yield ref


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"{res.args}: {res.stdout} {res.stderr}"
    return res.stdout


def remove(ns: NetSuite, *ids: str) -> None:
    """Kill, delete the task (once it has stopped) and the container; quietly if gone."""
    for id in ids:
        ns.ctr("task", "kill", "-s", "SIGKILL", id)
        wait_for(lambda: ns.ctr("task", "delete", id).returncode == 0 or id not in ns.ctr("task", "ls").stdout,
                 timeout=20, every=0.2)
        ns.ctr("container", "delete", id)


def clean(ns: NetSuite, rules: str, timeout: float = 30) -> None:
    """Nothing left behind (of what the plugins made since ``rules`` were taken), once the
    detaches under way are done."""
    if not wait_for(lambda: ns.leftovers(rules) == CLEAN, timeout=timeout):
        left = {k: v for k, v in ns.leftovers(rules).items() if v}
        raise AssertionError(f"left behind: {left}")


def host_python(ns: NetSuite, script: str, timeout: float = 60) -> str:
    """``script`` run by Python in the host's namespace; its output."""
    return ok(subprocess.run(ns.host.command(sys.executable, "-c", script), capture_output=True, text=True,
                             timeout=timeout))


def test_two_containers_reach_each_other_and_a_port_reaches_one(ns: NetSuite, network: str, rootfs: Path) -> None:
    rules = ns.host.rules()
    ok(ns.ctr("run", "-d", "--label", f"{LABEL_NETWORK}={network}", "--label", f"{LABEL_PORTS}=8080:80",
              "--rootfs", str(rootfs), "web", "/bin/sh", "-c", "echo hello-from-web | nc -l -p 80; sleep 600"))
    ok(ns.ctr("run", "-d", "--label", f"{LABEL_NETWORK}={network}", "--rootfs", str(rootfs), "client",
              "/bin/sleep", "600"))
    try:
        shown = ok(ns.ctr("task", "exec", "--exec-id", "ip", "web", "/bin/ip", "-o", "addr", "show", "eth0"))
        web = shown.split("inet ")[1].split("/")[0]
        assert web.startswith(SUBNET + ".")
        ifaces = json.loads(ok(ns.cli("network", "interfaces", "web", "--json")))
        assert [(i["ifname"], i["addresses"][0].split("/")[0]) for i in ifaces] == [("eth0", web)]
        assert ok(ns.ctr("task", "exec", "--exec-id", "ping", "client", "/bin/ping", "-c", "1", "-W", "5", web))
        # the host reaches web's nc through the port mapping (to an address of its own)
        got = host_python(ns, f"""
import socket, time
end = time.monotonic() + 20
while True:
    try:
        s = socket.create_connection(("{SUBNET}.1", 8080), 2); break
    except OSError:
        if time.monotonic() > end: raise
        time.sleep(0.1)
print(s.recv(100).decode().strip())
""")
        assert got.strip() == "hello-from-web"
        inspected = json.loads(ok(ns.cli("network", "inspect", network)))[0]
        assert sorted(inspected["containers"]) == ["default/client", "default/web"]
        res = ns.cli("network", "rm", network)
        assert res.returncode == 1 and "in use by 2 container(s)" in res.stderr
        with pytest.raises(FailedPrecondition):
            ns.networks("Remove", name=network)
    finally:
        remove(ns, "web", "client")
    clean(ns, rules)  # detached when deleted (the plugins' DEL right after the answer)
    assert json.loads(ok(ns.cli("network", "inspect", network)))[0]["containers"] == []


def test_unknown_networks_and_bad_input_are_refused_and_make_nothing(ns: NetSuite, network: str,
                                                                     rootfs: Path, tmp_path: Path) -> None:
    rules = ns.host.rules()
    res = ns.ctr("run", "--rm", "--label", f"{LABEL_NETWORK}=nope", "--rootfs", str(rootfs), "lost", "/bin/true")
    assert res.returncode != 0 and "network 'nope': not found" in res.stderr
    res = ns.ctr("run", "--rm", "--label", f"{LABEL_NETWORK}={network}", "--label", f"{LABEL_PORTS}=80",
                 "--rootfs", str(rootfs), "lost2", "/bin/true")
    assert res.returncode != 0 and "port mapping '80'" in res.stderr
    assert ok(ns.ctr("task", "ls", "-q")).split() == [] and ok(ns.ctr("container", "ls", "-q")).split() == []
    with pytest.raises(NotFound, match="network 'nope': not found"):
        ns.networks("Inspect", name="nope")
    bad = tmp_path / "bad.conflist"
    bad.write_text(json.dumps({"cniVersion": "1.0.0", "name": "broken", "plugins": [{"type": "no-such-plugin"}]}))
    res = ns.cli("network", "create", "broken", "--conflist", str(bad))
    assert res.returncode == 1 and "no plugin 'no-such-plugin'" in res.stderr
    with pytest.raises(InvalidArgument, match="not JSON"):
        ns.networks("Create", name="broken", conflist="{")
    assert "broken" not in ok(ns.cli("network", "ls"))
    clean(ns, rules)


def test_with_ns_joins_a_namespace_made_beforehand(ns: NetSuite, network: str, rootfs: Path) -> None:
    rules = ns.host.rules()
    with Host("flpod") as pod:  # made before, outside Flotilla: a pod's namespace
        path = f"/var/run/netns/{pod.name}"
        ok(ns.ctr("run", "-d", "--with-ns", f"network:{path}", "--rootfs", str(rootfs), "p1",
                  "/bin/sh", "-c", "echo from-p1 | nc -l -p 9000; sleep 600"))
        try:
            pid = int(ok(ns.ctr("task", "ls")).split("p1")[1].split()[0])
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(pod.path).st_ino
            # a second container in the same namespace reaches p1 on loopback: they share it
            got = wait_for(lambda: ns.ctr("run", "--rm", "--with-ns", f"network:{path}", "--rootfs", str(rootfs),
                                          "p2", "/bin/nc", "127.0.0.1", "9000").stdout.strip(), timeout=20)
            assert got == "from-p1"
            # and a labelled one joining it gets its interface there, taken away when it goes
            ok(ns.ctr("run", "-d", "--with-ns", f"network:{path}", "--label", f"{LABEL_NETWORK}={network}",
                      "--rootfs", str(rootfs), "p3", "/bin/sleep", "600"))
            assert f"inet {SUBNET}." in pod.run("ip", "-o", "addr", "show", "eth0").stdout
            remove(ns, "p3")
            assert wait_for(lambda: pod.run("ip", "-o", "link", "show", "eth0", check=False).returncode != 0,
                            timeout=20)
        finally:
            remove(ns, "p1", "p3")
    clean(ns, rules)


def test_flotilla_run_net_and_publish(ns: NetSuite, network: str, image: str) -> None:
    rules = ns.host.rules()
    res = ns.cli("run", "--rm", "--net", network, "-p", "8081:80", image, "clirun",
                 "/bin/sh", "-c", "ip -o addr show eth0")
    assert res.returncode == 0 and f"inet {SUBNET}." in res.stdout, res.stderr
    res = ns.cli("run", "--rm", "--net-host", "--net", network, image, "clirun2", "/bin/true")
    assert res.returncode == 2 and "exclude each other" in res.stderr
    clean(ns, rules)


def test_interfaces_of_a_running_task_through_the_cli(ns: NetSuite, network: str, rootfs: Path) -> None:
    """connect / set / disconnect on a container created without any label; an interface
    left on one whose task is then deleted is released by the service's sweep."""
    rules = ns.host.rules()
    ok(ns.ctr("run", "-d", "--rootfs", str(rootfs), "plain", "/bin/sleep", "600"))
    try:
        added = json.loads(ok(ns.cli("network", "connect", "plain", network, "--json")))
        assert [i["ifname"] for i in added] == ["eth0"]
        shown = ok(ns.ctr("task", "exec", "--exec-id", "ip1", "plain", "/bin/ip", "-o", "addr", "show", "eth0"))
        assert f"inet {added[0]['addresses'][0]}" in shown
        ok(ns.cli("network", "connect", "plain", network, "--ifname", "net1", "--mtu", "1400"))
        ok(ns.cli("network", "set", "plain", "net1", "--mtu", "1300"))
        assert "mtu 1300" in ok(ns.ctr("task", "exec", "--exec-id", "ip2", "plain", "/bin/ip", "-o", "link",
                                       "show", "net1"))
        ok(ns.cli("network", "disconnect", "plain", "net1"))
        assert ns.ctr("task", "exec", "--exec-id", "ip3", "plain", "/bin/ip", "link", "show", "net1").returncode != 0
        res = ns.cli("network", "connect", "nosuch", network)
        assert res.returncode == 1 and "not found" in res.stderr
    finally:
        remove(ns, "plain")  # eth0 still attached: no label, so the sweep releases it
    clean(ns, rules)


def _cni_conflist(tmp: Path) -> Path:
    (tmp / "net.d").mkdir()
    (tmp / "net.d" / "10-test.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "ctrcni", "plugins": [
            {"type": "bridge", "bridge": "flcni0", "isGateway": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                      "dataDir": str(tmp / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}))
    return tmp / "net.d"


def ctr_cni_script(tmp: Path, conf: Path, runs: list[str]) -> list[str]:
    """ctr's own CNI reads /etc/cni/net.d and caches in /var/lib/cni: both are overlaid in a
    mount namespace of this command's own, so the machine's directories stay untouched
    (the machine may have a net.d of its own: containerd's CRI plugin makes one; the overlay hides it)."""
    for d in ("etc-up", "etc-work", "lib-up", "lib-work"):
        (tmp / d).mkdir()
    script = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp}/etc-up,workdir={tmp}/etc-work /etc && "
              f"mount -t overlay overlay -o lowerdir=/var/lib,upperdir={tmp}/lib-up,workdir={tmp}/lib-work "
              f"/var/lib && rm -rf /etc/cni/net.d && mkdir -p /etc/cni && cp -r {conf} /etc/cni/net.d && " + " && ".join(runs))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def test_ctr_run_cni_gets_an_address_as_against_containerd(ns: NetSuite, rootfs: Path, tmp_path: Path,
                                                           containerd: object) -> None:
    conf = _cni_conflist(tmp_path)
    runs = []
    for name, address in (("flotilla", ns.address), ("containerd", containerd.address)):  # type: ignore[attr-defined]
        runs.append(f"echo {name}: $({CTR_PATH} --address {address} run --rm --cni --rootfs {rootfs} "
                    f"cni-{name}-{uuid.uuid4().hex[:6]} /bin/ip -o addr show eth0 2>&1)")
    out = ok(subprocess.run(ns.host.command(*ctr_cni_script(tmp_path, conf, runs)), capture_output=True,
                            text=True, timeout=120))
    lines = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("flotilla:", "containerd:")))
    assert "inet 10.99.0." in lines["flotilla"] and "inet 10.99.0." in lines["containerd"], out


def _measure_egress(ns: NetSuite, container: str, nbytes: int) -> float:
    """Bits per second from ``container`` to a listener in the host namespace, from the
    first byte to the last."""
    port = random.randint(20000, 30000)
    listener = subprocess.Popen(ns.host.command(sys.executable, "-c", f"""
import socket, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("{SUBNET}.1", {port})); srv.listen(1); srv.settimeout(60)
print("ready", flush=True)
conn, _ = srv.accept(); conn.settimeout(60)
got, first = 0, None
while True:
    data = conn.recv(65536)
    if not data: break
    first = first or time.monotonic()
    got += len(data)
print(got, time.monotonic() - first, flush=True)
"""), stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        ok(ns.ctr("task", "exec", "--exec-id", f"send{port}", container, "/bin/sh", "-c",
                  f"dd if=/dev/zero bs=1024 count={nbytes // 1024} 2>/dev/null | nc {SUBNET}.1 {port}", timeout=90))
        got, seconds = listener.stdout.readline().split()
        assert int(got) == nbytes
        return nbytes * 8 / float(seconds)
    finally:
        listener.kill()
        listener.wait()


def test_a_bandwidth_limit_changed_on_a_running_task_is_in_effect(ns: NetSuite, network: str, rootfs: Path) -> None:
    """Each change of the limit is measured in effect, with wide margins (what is asserted is
    the limit, never this machine's speed): at most the rate, allowing for the token bucket's
    burst (a tenth of a second's worth) sent at once and 30% more."""
    ok(ns.ctr("run", "-d", "--label", f"{LABEL_NETWORK}={network}", "--rootfs", str(rootfs), "bw",
              "/bin/sleep", "600"))

    def at_most(rate: float, size: int) -> float:
        bits, burst = size * 8, max(rate // 10, MIN_BURST)
        return rate * bits / (bits - burst) * 1.3

    try:
        free = _measure_egress(ns, "bw", 1024 * 1024)
        ok(ns.cli("network", "set", "bw", "eth0", "--rate", "1m"))
        slow = _measure_egress(ns, "bw", 256 * 1024)
        ok(ns.cli("network", "set", "bw", "eth0", "--rate", "8m"))
        faster = _measure_egress(ns, "bw", 1024 * 1024)
        ok(ns.cli("network", "set", "bw", "eth0", "--no-limit"))
        again = _measure_egress(ns, "bw", 1024 * 1024)
        print(f"egress Mbit/s: no limit {free / 1e6:.1f}, 1m {slow / 1e6:.2f}, 8m {faster / 1e6:.2f}, "
              f"no limit again {again / 1e6:.1f}")
        assert slow <= at_most(1e6, 256 * 1024)
        assert 3e6 < faster <= at_most(8e6, 1024 * 1024)
        assert free > 2 * at_most(8e6, 1024 * 1024) and again > 2 * at_most(8e6, 1024 * 1024)
    finally:
        remove(ns, "bw")


def _kill_during(ns: NetSuite, state: str, timeout: float = 10.0) -> bool:
    """SIGKILL the network service as soon as an interface is being added (or removed), as
    its record says; True if it was caught there (else it is killed anyway)."""
    tasks = ns.suite.root / "network" / "tasks"
    marker = f'"state": "{state}"'
    caught = bool(wait_for(lambda: any(marker in p.read_text() for p in tasks.glob("*.json")
                                       if p.exists()), timeout=timeout, every=0.002))
    pid = ns.suite.program_pid("network")
    if pid:
        os.kill(pid, signal.SIGKILL)
    return caught


def test_networked_runs_with_the_service_killed_leave_nothing(ns: NetSuite, network: str, rootfs: Path) -> None:
    """The issue's 200 networked ``run --rm`` cycles (30 unless FLOTILLA_STRESS is set), the
    network service SIGKILLed in the middle of an attach or a detach of a few of them:
    afterwards no veth, address, iptables rule, held namespace or record is left."""
    cycles = 200 * int(os.environ["FLOTILLA_STRESS"]) if "FLOTILLA_STRESS" in os.environ else 30
    kills = {cycles * k // 4: ("adding", "removing", "adding")[k - 1] for k in (1, 2, 3)}
    labels = ["--label", f"{LABEL_NETWORK}={network}", "--label", f"{LABEL_PORTS}=18080:80"]
    rules = ns.host.rules()
    failed, caught = [], []
    for i in range(cycles):
        run = subprocess.Popen(ns.host.command(CTR_PATH, "--address", ns.address, "run", "--rm", *labels,
                                               "--rootfs", str(rootfs), f"cycle-{i}", "/bin/true"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if i in kills:
            caught.append((kills[i], _kill_during(ns, kills[i])))
        _, err = run.communicate(timeout=120)
        if run.returncode != 0:
            failed.append((i, err.strip()))
    print(f"{cycles} cycles; kills (state, caught there): {caught}; failed runs: {failed}")
    assert ok(ns.ctr("task", "ls", "-q")).split() == []
    for c in ok(ns.ctr("container", "ls", "-q")).split():  # a failed run may leave its container (ctr's)
        ns.ctr("container", "delete", c)
    # the service is back (supervisord restarts it) and has released everything
    clean(ns, rules)
    assert len(failed) <= len(kills), failed  # at most the runs a kill landed in
    assert any(c for _, c in caught), "no kill landed in an attach or a detach"


def test_the_network_credential_may_say_nothing_else(ns: NetSuite, network: str) -> None:
    """Connected with the service's own key (in the suite's namespace, where its nats-server
    listens): other services' requests, events, anyone's inbox: all refused."""
    s = ns.suite
    p, h = s.prefix, s.host
    refused: list[str] = []

    async def probe() -> None:
        async def on_error(exc: Exception) -> None:
            refused.append(str(exc))
        nc = await nats.connect(s.nats_url, nkeys_seed=str(s.credentials.seed_file("network")), error_cb=on_error,
                                inbox_prefix="_INBOX.network", allow_reconnect=False)
        try:
            for subject in (f"{p}.runtime.{h}.ping", f"{p}.events", "_INBOX.>", "_INBOX.gateway.>"):
                await nc.subscribe(subject)
            for subject in (f"{p}.events", f"{p}.runtime.{h}.tasks.create", f"{p}.metadata.namespaces.list",
                            f"{p}.content.delete"):
                await nc.publish(subject, b"\xc0")
            await nc.flush()
            await asyncio.sleep(0.3)
        finally:
            await nc.close()

    with ns.host.entered():
        asyncio.run(probe())
    assert len([e for e in refused if "permissions violation" in e.lower()]) == 8, refused
    # and the gateway reaches it: a call through the socket is answered
    assert network in [n["name"] for n in ns.networks("List")]  # type: ignore[attr-defined]
