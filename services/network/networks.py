"""Networks: standard CNI conflists in one directory, as libcni reads them (``*.conflist``,
``*.conf``, ``*.json``, by file name; the first file of a name wins). An operator's existing
conflists work when copied there; ``create`` writes new ones. Blocking: call in a thread.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from flotilla.libs.api.network import DEFAULT_NETWORK, Network, NetworkSpec
from flotilla.libs.errors import AlreadyExists, InvalidArgument, NotFound

from .cni import TOOLS_PATH, Plugins, validate

log = logging.getLogger("flotilla.network")

CNI_VERSION = "1.0.0"
EXTENSIONS = (".conflist", ".conf", ".json")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
POOL = ipaddress.ip_network("10.91.0.0/16")       # where networks without a subnet get a /24
DEFAULT_SUBNET = os.environ.get("FLOTILLA_NETWORK_DEFAULT_SUBNET", "10.90.0.0/16")
DEFAULT_BRIDGE = "flotilla0"
MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
IPVLAN_MODES = ("l2", "l3", "l3s")


def not_found(name: str) -> NotFound:
    return NotFound(f"network {name!r}: not found")


def bridge_name(name: str) -> str:
    """A device name of at most 15 characters, the kernel's limit."""
    plain = f"fl-{name}"
    if len(plain) <= 15 and re.fullmatch(r"[A-Za-z0-9_.-]+", plain):
        return plain
    return "fl-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def subnets_of(conflist: dict[str, Any]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The subnets the conflist's host-local IPAM hands addresses from."""
    found = []
    for plugin in conflist.get("plugins", []):
        ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
        if not isinstance(ipam, dict):
            continue
        ranges = [r for rs in ipam.get("ranges", []) if isinstance(rs, list) for r in rs if isinstance(r, dict)]
        if ipam.get("subnet"):
            ranges.append({"subnet": ipam["subnet"]})
        for r in ranges:
            try:
                found.append(ipaddress.ip_network(str(r.get("subnet", "")), strict=False))
            except ValueError:
                pass
    return found


def summary(path: Path, conflist: dict[str, Any], containers: list[str]) -> Network:
    first = conflist["plugins"][0]
    subnets = subnets_of(conflist)
    gateway = ""
    for plugin in conflist["plugins"]:
        for rs in (plugin.get("ipam") or {}).get("ranges", []) or []:
            for r in rs if isinstance(rs, list) else []:
                gateway = gateway or str(r.get("gateway", ""))
    return Network(name=conflist["name"], file=str(path), conflist=json.dumps(conflist, indent=2),
                   driver=str(first.get("type", "")), subnet=",".join(map(str, subnets)), gateway=gateway,
                   containers=sorted(containers))


class NetworkDir:
    def __init__(self, conf_dir: Path, plugins: Plugins, ipam_dir: Path, tuning_dir: Path) -> None:
        self.dir, self.plugins, self.ipam_dir, self.tuning_dir = conf_dir, plugins, ipam_dir, tuning_dir

    # -- reading -------------------------------------------------------------------------

    def load_all(self) -> dict[str, tuple[Path, dict[str, Any]]]:
        """Every valid network by name; a file that is not one is logged and skipped."""
        found: dict[str, tuple[Path, dict[str, Any]]] = {}
        try:
            files = sorted(p for p in self.dir.iterdir() if p.suffix in EXTENSIONS and p.is_file())
        except FileNotFoundError:
            return found
        for path in files:
            try:
                conflist = validate(json.loads(path.read_text()), self.plugins, str(path))
            except (ValueError, InvalidArgument) as exc:
                log.warning("network configuration %s skipped: %s", path, exc)
                continue
            found.setdefault(conflist["name"], (path, conflist))
        return found

    def get(self, name: str) -> tuple[Path, dict[str, Any]]:
        found = self.load_all().get(name)
        if found is None:
            if name == DEFAULT_NETWORK:  # made on first use
                return self._write(self._bridge(NetworkSpec(DEFAULT_NETWORK, subnet=DEFAULT_SUBNET,
                                                            bridge=DEFAULT_BRIDGE), {}))
            raise not_found(name)
        return found

    def prepared(self, conflist: dict[str, Any]) -> dict[str, Any]:
        """The conflist as the plugins get it: state the plugins keep goes under Flotilla's
        directories (host-local's allocations, tuning's saved settings) unless it says where."""
        conf = copy.deepcopy(conflist)
        for plugin in conf["plugins"]:
            ipam = plugin.get("ipam")
            if isinstance(ipam, dict) and ipam.get("type") == "host-local" and "dataDir" not in ipam:
                ipam["dataDir"] = str(self.ipam_dir)
            if plugin.get("type") == "tuning" and "dataDir" not in plugin:
                plugin["dataDir"] = str(self.tuning_dir)
        return conf

    # -- changing ------------------------------------------------------------------------

    def create(self, spec: NetworkSpec) -> tuple[Path, dict[str, Any]]:
        if not NAME.match(spec.name):
            raise InvalidArgument(f"network name {spec.name!r}: letters, digits, '_', '.' and '-' only, "
                                  "at most 63: invalid argument")
        existing = self.load_all()
        if spec.name in existing:
            raise AlreadyExists(f"network {spec.name!r}: already exists")
        if spec.conflist:
            try:
                raw = json.loads(spec.conflist)
            except ValueError as exc:
                raise InvalidArgument(f"network {spec.name!r}: conflist is not JSON ({exc}): invalid argument") from None
            conflist = validate(raw, self.plugins, f"network {spec.name!r}")
            if conflist["name"] != spec.name:
                raise InvalidArgument(f"network {spec.name!r}: the conflist is named {conflist['name']!r}: "
                                      "invalid argument")
        elif spec.driver == "bridge":
            conflist = self._bridge(spec, existing)
        elif spec.driver in ("macvlan", "ipvlan"):
            conflist = self._vlan(spec)
        else:
            raise InvalidArgument(f"network {spec.name!r}: driver {spec.driver!r} is not one of bridge, "
                                  "macvlan, ipvlan: invalid argument")
        mine = subnets_of(conflist)
        for other, (_, conf) in existing.items():
            for a in mine:
                for b in subnets_of(conf):
                    if a.version == b.version and a.overlaps(b):  # type: ignore[arg-type]
                        raise InvalidArgument(f"network {spec.name!r}: subnet {a} overlaps network {other!r}'s "
                                              f"{b}: invalid argument")
            bridges = {p.get("bridge") for p in conf["plugins"] if p.get("type") == "bridge"}
            for p in conflist["plugins"]:
                if p.get("type") == "bridge" and p.get("bridge") in bridges:
                    raise InvalidArgument(f"network {spec.name!r}: bridge {p['bridge']!r} is network {other!r}'s: "
                                          "invalid argument")
        return self._write(conflist)

    def remove(self, name: str) -> None:
        """The conflist, and what the plugins left of a network nobody uses: its bridge
        device and its address allocations."""
        path, conflist = self._existing(name)  # (never made on first use here)
        path.unlink()
        for plugin in conflist["plugins"]:
            if plugin.get("type") == "bridge":
                device = str(plugin.get("bridge") or "cni0")
                subprocess.run(["ip", "link", "delete", device, "type", "bridge"], capture_output=True,
                               env={"PATH": TOOLS_PATH}, timeout=30)
        shutil.rmtree(self.ipam_dir / name, ignore_errors=True)

    def _existing(self, name: str) -> tuple[Path, dict[str, Any]]:
        found = self.load_all().get(name)
        if found is None:
            raise not_found(name)
        return found

    def _write(self, conflist: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{conflist['name']}.conflist"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(conflist, indent=2) + "\n")
        os.replace(tmp, path)
        return path, conflist

    def _ipam(self, spec: NetworkSpec, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
              routes: bool) -> dict[str, Any]:
        r: dict[str, Any] = {"subnet": str(subnet)}
        if spec.gateway:
            try:
                gw = ipaddress.ip_address(spec.gateway)
            except ValueError:
                raise InvalidArgument(f"network {spec.name!r}: gateway {spec.gateway!r} is not an address: "
                                      "invalid argument") from None
            if gw not in subnet:
                raise InvalidArgument(f"network {spec.name!r}: gateway {gw} is not in {subnet}: invalid argument")
            r["gateway"] = str(gw)
        ipam: dict[str, Any] = {"type": "host-local", "ranges": [[r]]}
        if routes:
            ipam["routes"] = [{"dst": "0.0.0.0/0" if subnet.version == 4 else "::/0"}]
        return ipam

    def _subnet(self, spec: NetworkSpec, existing: dict[str, tuple[Path, dict[str, Any]]]
                ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if spec.subnet:
            try:
                return ipaddress.ip_network(spec.subnet, strict=False)
            except ValueError:
                raise InvalidArgument(f"network {spec.name!r}: subnet {spec.subnet!r} is not a CIDR: "
                                      "invalid argument") from None
        taken = [s for _, conf in existing.values() for s in subnets_of(conf)]
        for candidate in POOL.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in taken if t.version == 4):  # type: ignore[arg-type]
                return candidate
        raise InvalidArgument(f"network {spec.name!r}: no free /24 left in {POOL}; give a subnet: invalid argument")

    def _bridge(self, spec: NetworkSpec, existing: dict[str, tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
        bridge = spec.bridge or bridge_name(spec.name)
        if len(bridge) > 15:
            raise InvalidArgument(f"network {spec.name!r}: bridge name {bridge!r} is longer than 15: invalid argument")
        main: dict[str, Any] = {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": spec.ip_masq,
                                "hairpinMode": True, "ipam": self._ipam(spec, self._subnet(spec, existing), True)}
        if spec.mtu:
            main["mtu"] = spec.mtu
        # nerdctl's chain: ports (portmap), forwarding allowed whatever FORWARD's policy
        # (firewall); bandwidth only acts when a limit is asked for
        return {"cniVersion": CNI_VERSION, "name": spec.name, "plugins": [
            main, {"type": "portmap", "capabilities": {"portMappings": True}}, {"type": "firewall"},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}

    def _vlan(self, spec: NetworkSpec) -> dict[str, Any]:
        if not spec.parent:
            raise InvalidArgument(f"network {spec.name!r}: a {spec.driver} network needs a parent interface: "
                                  "invalid argument")
        if not spec.subnet:
            raise InvalidArgument(f"network {spec.name!r}: a {spec.driver} network needs a subnet (the parent's "
                                  "link): invalid argument")
        modes = MACVLAN_MODES if spec.driver == "macvlan" else IPVLAN_MODES
        mode = spec.mode or modes[0]
        if mode not in modes:
            raise InvalidArgument(f"network {spec.name!r}: {spec.driver} mode {mode!r} is not one of "
                                  f"{', '.join(modes)}: invalid argument")
        subnet = self._subnet(spec, {})
        main: dict[str, Any] = {"type": spec.driver, "master": spec.parent, "mode": mode,
                                "ipam": self._ipam(spec, subnet, bool(spec.gateway))}
        if spec.mtu:
            main["mtu"] = spec.mtu
        return {"cniVersion": CNI_VERSION, "name": spec.name, "plugins": [main]}
