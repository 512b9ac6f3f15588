"""The network service's logic, testable without NATS: networks (conflists), and the
interfaces of tasks, made and undone by the CNI plugins in each task's network namespace.

Blocking throughout (plugins, mounts, files): the server calls it in threads. One lock per
task (striped) orders the calls about one task; ``_net_lock`` orders network changes with
the start of attachments, so a network is never removed while an interface on it is being
made. Every step is recorded before it is taken (store.py), so ``recover`` undoes what a
killed service left half-made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import zlib
from pathlib import Path
from typing import Any

from flotilla.libs.api.network import (
    Bandwidth, Interface, InterfaceAdd, InterfaceUpdate, Network, NetworkSpec, wants_network,
)
from flotilla.libs.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound,
)

from . import options
from .cni import DEFAULT_PATH, TOOLS_PATH, Call, PluginError, Plugins, end_strays, plugin_config
from .netns import alive, is_host_namespace, is_pinned, pin, start_time, unpin
from .networks import NetworkDir, summary
from .store import ADDING, REMOVING, UP, IfaceRecord, Records, TaskRecord, cni_id, key

log = logging.getLogger("flotilla.network")

MAX_DEL_TRIES = 5          # a DEL that keeps failing is retried by the sweep this often, then logged and dropped
STRIPES = 64


def cni_path() -> tuple[str, ...]:
    """Where the plugins are: FLOTILLA_CNI_PATH (colon-separated), else Debian's and the usual."""
    text = os.environ.get("FLOTILLA_CNI_PATH", "")
    return tuple(p for p in text.split(":") if p) or DEFAULT_PATH


class Engine:
    def __init__(self, root: Path, state: Path, plugins: Plugins | None = None,
                 conf_dir: Path | None = None) -> None:
        base = root / "network"
        self.owner = str(state / "network")
        self.plugins = plugins or Plugins(cni_path(), owner=self.owner)
        conf = conf_dir or Path(os.environ.get("FLOTILLA_NETWORK_CONF_DIR", "") or base / "net.d")
        self.tuning_dir = state / "network" / "tuning"
        self.networks = NetworkDir(conf, self.plugins, base / "ipam", self.tuning_dir)
        self.records = Records(base / "tasks")
        self.pins = state / "network" / "netns"
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._net_lock = threading.Lock()

    def _lock(self, namespace: str, container_id: str) -> threading.Lock:
        return self._stripes[zlib.crc32(f"{namespace}\0{container_id}".encode()) % STRIPES]

    # -- networks --------------------------------------------------------------------------

    def create_network(self, spec: NetworkSpec) -> Network:
        with self._net_lock:
            path, conflist = self.networks.create(spec)
        return summary(path, conflist, [])

    def list_networks(self) -> list[Network]:
        users = self._users()
        return [summary(path, conf, users.get(name, []))
                for name, (path, conf) in sorted(self.networks.load_all().items())]

    def inspect_network(self, name: str) -> Network:
        with self._net_lock:
            path, conflist = self.networks.get(name)
        return summary(path, conflist, self._users().get(name, []))

    def remove_network(self, name: str) -> None:
        self.sweep()  # a task that has exited holds no network
        with self._net_lock:
            users = self._users().get(name, [])
            if users:
                shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
                raise FailedPrecondition(f"network {name!r} is in use by {len(users)} container(s) ({shown}): "
                                         "failed precondition")
            self.networks.remove(name)

    def _users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {}
        for rec in self.records.all():
            for iface in rec.interfaces:
                users.setdefault(iface.network, []).append(f"{rec.namespace}/{rec.container_id}")
        return users

    # -- tasks -----------------------------------------------------------------------------

    def attach(self, namespace: str, container_id: str, pid: int, labels: dict[str, str]) -> list[Interface]:
        """Attach a new task as its container's labels say: one interface per network
        (eth0, eth1...), ports and bandwidth on the first. A call sent again returns what
        the first made; on a failure nothing stays. Without the network label: nothing."""
        if not wants_network(labels):
            return []
        names, ports, bw = options.from_labels(labels)
        options.capabilities(ports, bw)  # refused before anything is made
        with self._lock(namespace, container_id):
            rec, fresh = self._record(namespace, container_id, pid)
            try:
                self._pin(rec)
                for i, name in enumerate(names):
                    have = rec.iface(f"eth{i}")
                    if have is not None and have.state == UP and have.network == name:
                        continue  # made by this call's first sending
                    self._add(rec, name, f"eth{i}", ports if i == 0 else [], bw if i == 0 else None, 0)
            except BaseException:
                if fresh:
                    self._teardown(rec)
                raise
            return self._views(rec)

    def begin_detach(self, namespace: str, container_id: str, pid: int = 0) -> bool:
        """Mark every interface of the task ``removing`` (of process ``pid`` only, if given),
        for ``detach`` to undo next; True if it had any. Once this returns, the interfaces
        go even if the service is killed: recovery undoes what is ``removing``."""
        with self._lock(namespace, container_id):
            rec = self.records.get(namespace, container_id)
            if rec is None or (pid and rec.pid != pid):
                return False
            for iface in rec.interfaces:
                iface.state = REMOVING
            self.records.put(rec)
            return True

    def detach(self, namespace: str, container_id: str, pid: int = 0) -> bool:
        """Undo every interface of the task (of process ``pid`` only, if given); True if it had any."""
        with self._lock(namespace, container_id):
            rec = self.records.get(namespace, container_id)
            if rec is None or (pid and rec.pid != pid):
                return False
            self._teardown(rec)
            return True

    def interfaces(self, namespace: str, container_id: str) -> list[Interface]:
        rec = self.records.get(namespace, container_id)
        return self._views(rec) if rec is not None else []

    def add_interface(self, req: InterfaceAdd) -> Interface:
        options.check_ports(req.ports)
        options.capabilities(req.ports, req.bandwidth)
        _check_mtu(req.mtu)
        with self._lock(req.namespace, req.container_id):
            rec, fresh = self._record(req.namespace, req.container_id, req.pid)
            ifname = req.ifname or _next_ifname(rec)
            if rec.iface(ifname) is not None:
                raise AlreadyExists(f"interface {ifname} of task {req.container_id}: already exists")
            try:
                self._pin(rec)
                iface = self._add(rec, req.network, ifname, req.ports, req.bandwidth, req.mtu)
            except BaseException:
                if fresh or not rec.interfaces:
                    self._teardown(rec)
                raise
            return self._view(rec, iface)

    def update_interface(self, req: InterfaceUpdate) -> Interface:
        _check_mtu(req.mtu)
        if req.bandwidth is not None:
            options.capabilities([], req.bandwidth)
        with self._lock(req.namespace, req.container_id):
            rec, iface = self._iface(req.namespace, req.container_id, req.ifname)
            if req.bandwidth is not None:
                self._set_bandwidth(rec, iface, req.bandwidth)
            if req.mtu:
                self._set_mtu(rec, iface, req.mtu)
            self.records.put(rec)
            return self._view(rec, iface)

    def remove_interface(self, namespace: str, container_id: str, ifname: str) -> None:
        with self._lock(namespace, container_id):
            try:
                rec, iface = self._iface(namespace, container_id, ifname)
            except NotFound:
                return  # removed already (a call sent again)
            self._remove_iface(rec, iface)
            if not rec.interfaces:
                self._release(rec)

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> int:
        """At start, before serving: undo what a killed instance left half-made (interfaces
        being added or removed), release the tasks whose process is gone, and namespaces
        held for no record. Returns how many interfaces were undone."""
        strays = end_strays(self.owner)
        if strays:
            log.info("ended %d plugin process(es) a killed instance left running", strays)
        undone = 0
        keys = set()
        for rec in self.records.all():
            keys.add(rec.key)
            with self._lock(rec.namespace, rec.container_id):
                if not alive(rec.pid, rec.start_time):
                    undone += len(rec.interfaces)
                    self._teardown(rec)
                    continue
                for iface in [i for i in rec.interfaces if i.state != UP]:
                    undone += 1
                    self._remove_iface(rec, iface)
                if not rec.interfaces:
                    self._release(rec)
        with contextlib.suppress(FileNotFoundError):
            for held in self.pins.iterdir():
                if held.name not in keys:
                    unpin(held)
        return undone

    def sweep(self) -> int:
        """Release the tasks whose process has exited, and retry DELs that failed. A task
        whose lock is held is being worked on: left for the next sweep."""
        released = 0
        for rec in self.records.all():
            lock = self._lock(rec.namespace, rec.container_id)
            if not lock.acquire(blocking=False):
                continue
            try:
                current = self.records.get(rec.namespace, rec.container_id)
                if current is None:
                    continue
                if not alive(current.pid, current.start_time):
                    released += 1
                    self._teardown(current)
                else:
                    for iface in [i for i in current.interfaces if i.state == REMOVING]:
                        self._remove_iface(current, iface)
            finally:
                lock.release()
        return released

    # -- steps -----------------------------------------------------------------------------

    def _record(self, namespace: str, container_id: str, pid: int) -> tuple[TaskRecord, bool]:
        """The task's record, a new one if none (True), after releasing an earlier task's."""
        started = start_time(pid) if pid > 0 else None
        if started is None:
            raise NotFound(f"task {container_id}: process {pid} not found")
        rec = self.records.get(namespace, container_id)
        if rec is not None and (rec.pid != pid or rec.start_time != started):
            self._teardown(rec)  # an earlier task of the container's, not released yet
            if self.records.get(namespace, container_id) is not None:  # its DEL failed: kept to retry
                raise FailedPrecondition(f"task {container_id}: the interfaces of its container's previous task "
                                         "are not removed yet: failed precondition")
            rec = None
        if rec is not None:
            return rec, False
        rec = TaskRecord(namespace, container_id, pid, started, str(self.pins / key(namespace, container_id)))
        self.records.put(rec)  # first: a killed service finds the namespace it held through it
        return rec, True

    def _pin(self, rec: TaskRecord) -> None:
        path = Path(rec.netns)
        if not is_pinned(path):
            pin(rec.pid, path)
            if start_time(rec.pid) != rec.start_time:  # the process went, its pid reused meanwhile
                raise NotFound(f"task {rec.container_id}: process {rec.pid} not found")
        if is_host_namespace(rec.netns):
            raise FailedPrecondition(f"container {rec.container_id} shares the host's network namespace: "
                                     "no interface can be added to it: failed precondition")

    def _call(self, rec: TaskRecord, iface: IfaceRecord, caps: dict[str, Any] | None = None) -> Call:
        netns = rec.netns if is_pinned(Path(rec.netns)) else ""  # gone (a reboot): DEL releases what it can
        return Call(cni_id(rec.namespace, rec.container_id), netns, iface.ifname,
                    capabilities=iface.capabilities if caps is None else caps)

    def _add(self, rec: TaskRecord, network: str, ifname: str, ports: list[Any], bw: Bandwidth | None,
             mtu: int) -> IfaceRecord:
        caps = options.capabilities(ports, bw)
        with self._net_lock:
            _, conflist = self.networks.get(network)
            iface = IfaceRecord(network, ifname, ADDING, self.networks.prepared(conflist), caps, None, list(ports),
                                bw if options.limited(bw) else None, 0)
            rec.interfaces.append(iface)
            self.records.put(rec)
        def progress(result: dict[str, Any]) -> None:
            iface.result = result
            self.records.put(rec)

        try:
            iface.result = self.plugins.add(iface.conflist, self._call(rec, iface), progress)  # undoes itself
        except BaseException:
            rec.interfaces.remove(iface)
            self.records.put(rec)
            raise
        try:
            if options.limited(bw) and not any(p["type"] == "bandwidth" for p in iface.conflist["plugins"]):
                assert bw is not None
                self._set_bandwidth(rec, iface, bw)
            if mtu:
                self._set_mtu(rec, iface, mtu)
        except BaseException:
            self._remove_iface(rec, iface)
            raise
        iface.state = UP
        self.records.put(rec)
        return iface

    def _remove_iface(self, rec: TaskRecord, iface: IfaceRecord) -> bool:
        """DEL: the standalone plugins first, then the chain backwards. On a failure the
        interface stays (``removing``) for the sweep to try again; True when it is gone."""
        iface.state = REMOVING
        self.records.put(rec)
        call = self._call(rec, iface)
        failures: list[PluginError] = []
        for extra in reversed(list(iface.extras.values())):
            failures += self.plugins.delete(extra, call, iface.result)
        failures += self.plugins.delete(iface.conflist, call, iface.result)
        if failures:
            iface.failures += 1
            if iface.failures < MAX_DEL_TRIES:
                log.warning("DEL of %s on %s for %s/%s failed (%d), tried again later: %s", iface.ifname,
                            iface.network, rec.namespace, rec.container_id, iface.failures, failures[0])
                self.records.put(rec)
                return False
            log.error("DEL of %s on %s for %s/%s failed %d times, given up: %s", iface.ifname, iface.network,
                      rec.namespace, rec.container_id, iface.failures, failures)
        rec.interfaces.remove(iface)
        self.records.put(rec)
        return True

    def _teardown(self, rec: TaskRecord) -> None:
        for iface in reversed(list(rec.interfaces)):
            self._remove_iface(rec, iface)
        if not rec.interfaces:
            self._release(rec)

    def _release(self, rec: TaskRecord) -> None:
        unpin(Path(rec.netns))
        self.records.delete(rec)

    def _iface(self, namespace: str, container_id: str, ifname: str) -> tuple[TaskRecord, IfaceRecord]:
        rec = self.records.get(namespace, container_id)
        iface = rec.iface(ifname) if rec is not None else None
        if rec is None or iface is None or iface.state != UP:
            raise NotFound(f"interface {ifname} of task {container_id}: not found")
        return rec, iface

    def _set_bandwidth(self, rec: TaskRecord, iface: IfaceRecord, bw: Bandwidth) -> None:
        """The bandwidth plugin has no "change": its DEL drops the egress ifb but leaves the
        host veth's qdiscs (they go with the veth), and its ADD fails on them. So: DEL, clear
        the host veth's qdiscs with tc, ADD with the new limits (none: no ADD)."""
        host = _host_veth(iface)
        if host is None:
            raise FailedPrecondition(f"interface {iface.ifname} on {iface.network} has no host-side veth: the "
                                     "bandwidth plugin shapes veths only: failed precondition")
        conf = {"cniVersion": iface.conflist.get("cniVersion", "1.0.0"), "name": iface.conflist["name"],
                "plugins": [{"type": "bandwidth", "capabilities": {"bandwidth": True}}]}
        failures = self.plugins.delete(conf, self._call(rec, iface), iface.result)
        if failures:
            raise failures[0]
        for qdisc in ("root", "ingress"):
            subprocess.run(["tc", "qdisc", "del", "dev", host, qdisc], capture_output=True,
                           env={"PATH": TOOLS_PATH}, timeout=30)
        assert iface.result is not None
        iface.result = {**iface.result, "interfaces": [i for i in iface.result.get("interfaces", [])
                                                       if not str(i.get("name", "")).startswith("bwp")]}
        iface.extras.pop("bandwidth", None)
        iface.capabilities.pop("bandwidth", None)
        iface.bandwidth = None
        if options.limited(bw):
            caps = options.capabilities([], bw)
            call = self._call(rec, iface, {**iface.capabilities, **caps})
            iface.result = self.plugins.exec("bandwidth", "ADD", call,
                                             plugin_config(conf, conf["plugins"][0], call, iface.result))
            iface.extras["bandwidth"] = conf
            iface.capabilities.update(caps)
            iface.bandwidth = bw
        self.records.put(rec)

    def _set_mtu(self, rec: TaskRecord, iface: IfaceRecord, mtu: int) -> None:
        """By the tuning plugin, inside the namespace. Its DEL puts back what it saved, so an
        earlier change is undone first (else the saved value would be that change's)."""
        call = self._call(rec, iface)
        earlier = iface.extras.get("tuning")
        if earlier is not None:
            failures = self.plugins.delete(earlier, call, iface.result)
            if failures:
                raise failures[0]
        conf = {"cniVersion": iface.conflist.get("cniVersion", "1.0.0"), "name": iface.conflist["name"],
                "plugins": [{"type": "tuning", "mtu": mtu, "dataDir": str(self.tuning_dir)}]}
        iface.extras.pop("tuning", None)
        self.plugins.exec("tuning", "ADD", call, plugin_config(conf, conf["plugins"][0], call, iface.result))
        iface.extras["tuning"] = conf
        iface.mtu = mtu
        self.records.put(rec)

    # -- views -----------------------------------------------------------------------------

    def _views(self, rec: TaskRecord) -> list[Interface]:
        return [self._view(rec, i) for i in rec.interfaces if i.state == UP]

    @staticmethod
    def _view(rec: TaskRecord, iface: IfaceRecord) -> Interface:
        result = iface.result or {}
        ifaces = result.get("interfaces", []) or []
        addresses, gateway, mac = [], "", ""
        for ip in result.get("ips", []) or []:
            addresses.append(str(ip.get("address", "")))
            gateway = gateway or str(ip.get("gateway", ""))
            idx = ip.get("interface")
            if isinstance(idx, int) and 0 <= idx < len(ifaces):
                mac = mac or str(ifaces[idx].get("mac", ""))
        return Interface(namespace=rec.namespace, container_id=rec.container_id, network=iface.network,
                         ifname=iface.ifname, pid=rec.pid, netns=rec.netns, addresses=addresses, gateway=gateway,
                         mac=mac, host_ifname=_host_veth(iface) or "", ports=list(iface.ports),
                         bandwidth=iface.bandwidth, mtu=iface.mtu, result=json.dumps(result))


def _host_veth(iface: IfaceRecord) -> str | None:
    """The host's end of the interface's veth, from the chain's result: the interface with
    no sandbox that is neither the bridge nor the bandwidth plugin's ifb."""
    bridges = {str(p.get("bridge", "")) for p in iface.conflist["plugins"] if p.get("type") == "bridge"}
    for i in (iface.result or {}).get("interfaces", []) or []:
        name = str(i.get("name", ""))
        if not i.get("sandbox") and name and name not in bridges and not name.startswith("bwp"):
            return name
    return None


def _next_ifname(rec: TaskRecord) -> str:
    taken = {i.ifname for i in rec.interfaces}
    return next(f"eth{n}" for n in range(len(taken) + 1) if f"eth{n}" not in taken)


def _check_mtu(mtu: int) -> None:
    if mtu and not 68 <= mtu <= 65535:
        raise InvalidArgument(f"mtu {mtu}: 68 to 65535: invalid argument")
