"""The CNI protocol (containernetworking/cni SPEC.md, versions 0.3.0 to 1.0.0), run as
libcni runs it: each plugin of a conflist is an executable found on the plugin path, given
``CNI_*`` variables and its configuration as JSON on stdin; ADD runs the chain in order,
each plugin getting the one before's result as ``prevResult``; DEL runs it backwards with
the ADD's result. Blocking: callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flotilla.libs.errors import FailedPrecondition, InvalidArgument

DEFAULT_PATH = ("/usr/lib/cni", "/opt/cni/bin")
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
PLUGIN_TIMEOUT = 60.0  # seconds one plugin may run (iptables waits for its lock)
# the plugins run iptables, tc and ip: a PATH that finds them whatever ours is
TOOLS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# set in every plugin's environment (and so in what it runs: host-local, iptables), naming
# its owner: a restarted service finds the plugins its killed predecessor left running
OWNER_VARIABLE = "FLOTILLA_CNI_OWNER"


class PluginError(FailedPrecondition):
    """A plugin said no (its CNI error: code, msg, details) or could not be run."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        self.plugin, self.command, self.cni_code, self.msg, self.details = plugin, command, code, msg, details
        text = f"cni plugin {plugin} failed ({command}): {msg}" + (f": {details}" if details else "")
        super().__init__(f"{text}: failed precondition")


@dataclass
class Call:
    """One container's interface as CNI sees it (the ``CNI_*`` variables)."""
    container_id: str
    netns: str                      # path of the network namespace ("" on a DEL when it is gone)
    ifname: str
    args: dict[str, str] = field(default_factory=dict)  # CNI_ARGS
    # runtimeConfig offered to the plugins that declare the capability (portMappings, bandwidth...)
    capabilities: dict[str, Any] = field(default_factory=dict)


class Plugins:
    """Finds and runs plugin executables on ``path`` (CNI_PATH)."""

    def __init__(self, path: tuple[str, ...] = DEFAULT_PATH, owner: str = "") -> None:
        self.path, self.owner = tuple(path), owner

    def find(self, kind: str) -> Path | None:
        if not kind or "/" in kind or kind.startswith("."):
            return None
        for d in self.path:
            candidate = Path(d) / kind
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        return None

    def exec(self, kind: str, command: str, call: Call, config: dict[str, Any]) -> dict[str, Any] | None:
        """Run plugin ``kind`` once; its result (ADD) or None. A CNI error is a PluginError."""
        binary = self.find(kind)
        if binary is None:
            raise PluginError(kind, command, 0, f"plugin type={kind!r} not found in {':'.join(self.path)}")
        env = {
            "PATH": TOOLS_PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": call.container_id,
            "CNI_NETNS": call.netns,
            "CNI_IFNAME": call.ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in call.args.items()),
            "CNI_PATH": ":".join(self.path),
        }
        if self.owner:
            env[OWNER_VARIABLE] = self.owner
        try:
            out = subprocess.run([str(binary)], input=json.dumps(config).encode(), env=env, check=False,
                                 capture_output=True, timeout=PLUGIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PluginError(kind, command, 0, f"did not answer within {PLUGIN_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise PluginError(kind, command, 0, str(exc)) from None
        if out.returncode != 0:
            raise _error(kind, command, out.stdout, out.stderr)
        if command != "ADD":
            return None
        try:
            result = json.loads(out.stdout or b"{}")
        except ValueError:
            raise PluginError(kind, command, 0, f"not a JSON result: {out.stdout[:200]!r}") from None
        if not isinstance(result, dict):
            raise PluginError(kind, command, 0, "not a JSON object")
        return result

    # -- a conflist -----------------------------------------------------------------------

    def add(self, conflist: dict[str, Any], call: Call,
            progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """ADD down the chain. On a failure the plugins already run are undone (DEL) before
        the error is raised, as libcni's callers do, so nothing half-made stays. ``progress``
        gets the result so far after each plugin: a DEL after a kill half-way needs it (the
        firewall plugin finds the rules to remove by the addresses in it)."""
        result: dict[str, Any] | None = None
        done = 0
        try:
            for plugin in conflist["plugins"]:
                result = self.exec(plugin["type"], "ADD", call, plugin_config(conflist, plugin, call, result))
                done += 1
                if progress is not None and result is not None:
                    progress(result)
        except BaseException:
            self.delete(conflist, call, result, upto=done + 1)
            raise
        return result or {"cniVersion": conflist.get("cniVersion", "1.0.0")}

    def delete(self, conflist: dict[str, Any], call: Call, result: dict[str, Any] | None,
               upto: int | None = None, skip: frozenset[str] = frozenset()) -> list[PluginError]:
        """DEL up the chain (the first ``upto`` plugins), going on past a failure: every
        plugin gets its chance to release what it holds. The failures are returned."""
        failures = []
        plugins = conflist["plugins"][:upto] if upto is not None else conflist["plugins"]
        for plugin in reversed(plugins):
            if plugin["type"] in skip:
                continue
            prev = result if _version_tuple(conflist.get("cniVersion", "")) >= (0, 4, 0) else None
            try:
                self.exec(plugin["type"], "DEL", call, plugin_config(conflist, plugin, call, prev))
            except PluginError as exc:
                failures.append(exc)
        return failures

    def check(self, conflist: dict[str, Any], call: Call, result: dict[str, Any]) -> None:
        if _version_tuple(conflist.get("cniVersion", "")) < (0, 4, 0):
            return
        for plugin in conflist["plugins"]:
            self.exec(plugin["type"], "CHECK", call, plugin_config(conflist, plugin, call, result))

    def version(self, kind: str) -> list[str]:
        """The CNI versions plugin ``kind`` speaks (its VERSION answer)."""
        binary = self.find(kind)
        if binary is None:
            return []
        out = subprocess.run([str(binary)], input=b'{"cniVersion":"1.0.0"}', capture_output=True,
                             env={"PATH": TOOLS_PATH, "CNI_COMMAND": "VERSION"}, timeout=PLUGIN_TIMEOUT)
        try:
            return list(json.loads(out.stdout).get("supportedVersions", []))
        except (ValueError, AttributeError):
            return []


def end_strays(owner: str, timeout: float = 10.0) -> int:
    """SIGKILL the processes a killed predecessor's plugins left running (their environment
    names ``owner``) and wait until they are gone: else one could finish an ADD after the
    DEL that recovery runs for it. Returns how many there were."""
    marker = f"{OWNER_VARIABLE}={owner}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read() + b"\0":
                        found.append(int(entry))
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{pid}") and _running(pid) for pid in found) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(found)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def plugin_config(conflist: dict[str, Any], plugin: dict[str, Any], call: Call,
                  prev: dict[str, Any] | None) -> dict[str, Any]:
    """What one plugin reads on stdin: its own object, the list's name and version, the
    runtime's values for the capabilities it declares, and the previous result."""
    conf = copy.deepcopy(plugin)
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist.get("cniVersion", "1.0.0")
    wanted = {k for k, on in (plugin.get("capabilities") or {}).items() if on}
    runtime = {k: v for k, v in call.capabilities.items() if k in wanted}
    if runtime:
        conf["runtimeConfig"] = runtime
    else:
        conf.pop("runtimeConfig", None)
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def _error(kind: str, command: str, stdout: bytes, stderr: bytes) -> PluginError:
    try:
        err = json.loads(stdout)
        return PluginError(kind, command, int(err.get("code", 0)), str(err.get("msg", "")), str(err.get("details", "")))
    except (ValueError, AttributeError, TypeError):
        text = (stdout or stderr).decode(errors="replace").strip()[:500]
        return PluginError(kind, command, 0, text or "failed without saying why")


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


def validate(conflist: Any, plugins: Plugins, source: str = "conflist") -> dict[str, Any]:
    """A conflist as libcni would accept it, else InvalidArgument saying what is wrong. A
    single plugin's configuration (a ``.conf``: ``type`` at top level) becomes a list of one."""
    if not isinstance(conflist, dict):
        raise InvalidArgument(f"{source}: not a JSON object: invalid argument")
    if "plugins" not in conflist and "type" in conflist:
        single = {k: v for k, v in conflist.items() if k not in ("name", "cniVersion")}
        conflist = {"cniVersion": conflist.get("cniVersion", "1.0.0"), "name": conflist.get("name"),
                    "plugins": [single]}
    name = conflist.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{source}: no \"name\": invalid argument")
    version = conflist.get("cniVersion", "")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidArgument(f"{source}: cniVersion {version!r} is not one of {', '.join(SUPPORTED_VERSIONS)}: "
                              "invalid argument")
    items = conflist.get("plugins")
    if not isinstance(items, list) or not items:
        raise InvalidArgument(f"{source}: \"plugins\" must be a non-empty list: invalid argument")
    for i, plugin in enumerate(items):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise InvalidArgument(f"{source}: plugins[{i}] has no \"type\": invalid argument")
        if plugins.find(plugin["type"]) is None:
            raise InvalidArgument(f"{source}: plugins[{i}]: no plugin {plugin['type']!r} in "
                                  f"{':'.join(plugins.path)}: invalid argument")
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") and plugins.find(str(ipam["type"])) is None:
            raise InvalidArgument(f"{source}: plugins[{i}]: no IPAM plugin {ipam['type']!r} in "
                                  f"{':'.join(plugins.path)}: invalid argument")
    return conflist
