"""OCI runtime specs like containerd's default, changed by composable options.

``generate_spec(namespace, id, with_image_config(cfg), with_process_args("sh"), with_tty())``
gives the same spec containerd's ``oci.GenerateSpec`` with the matching ``With...`` options
gives. Each option is a plain function of the spec dict, so options compose and are easy to
write: ``def with_x(spec: Spec) -> None``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]

SPEC_VERSION = "1.0.2-dev"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
NAMESPACES = ["pid", "ipc", "uts", "mount", "network"]


def default_mounts() -> list[dict[str, Any]]:
    def m(dest: str, typ: str, src: str, *opts: str) -> dict[str, Any]:
        return {"destination": dest, "type": typ, "source": src, "options": list(opts)}
    return [
        m("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        m("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        m("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
        m("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
        m("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        m("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        m("/run", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
    ]


def default_spec(namespace: str, id: str) -> Spec:
    """containerd's populateDefaultUnixSpec."""
    return {
        "ociVersion": SPEC_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {"bounding": list(DEFAULT_CAPS), "effective": list(DEFAULT_CAPS),
                             "permitted": list(DEFAULT_CAPS)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": "/" + "/".join(p for p in (namespace, id) if p),
            "namespaces": [{"type": t} for t in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def generate_spec(namespace: str, id: str, *opts: SpecOpt) -> Spec:
    spec = default_spec(namespace, id)
    for opt in opts:
        opt(spec)
    return spec


def compose(*opts: SpecOpt) -> SpecOpt:
    def apply(spec: Spec) -> None:
        for opt in opts:
            opt(spec)
    return apply


# ---- process
def replace_or_append_env(defaults: list[str], overrides: Iterable[str]) -> list[str]:
    """containerd's rule: ``K=V`` replaces or appends; a bare ``K`` removes K."""
    out = list(defaults)
    index = {e.split("=", 1)[0]: i for i, e in enumerate(out)}
    for value in overrides:
        key = value.split("=", 1)[0]
        if "=" not in value:
            if key in index:
                out[index[key]] = ""
            continue
        if key in index:
            out[index[key]] = value
        else:
            index[key] = len(out)
            out.append(value)
    return [e for e in out if e]


def _process(spec: Spec) -> dict[str, Any]:
    return spec.setdefault("process", {})


def with_env(*env: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        if env:
            p = _process(spec)
            p["env"] = replace_or_append_env(p.get("env") or [], env)
    return apply


def with_default_path_env(spec: Spec) -> None:
    p = _process(spec)
    p["env"] = replace_or_append_env(p.get("env") or [], [DEFAULT_PATH_ENV])


def with_process_args(*args: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        _process(spec)["args"] = list(args)
    return apply


def with_process_cwd(cwd: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        _process(spec)["cwd"] = cwd
    return apply


def with_tty(spec: Spec) -> None:
    p = _process(spec)
    p["terminal"] = True
    p["env"] = replace_or_append_env(p.get("env") or [], ["TERM=xterm"])


def with_tty_size(width: int, height: int) -> SpecOpt:
    def apply(spec: Spec) -> None:
        _process(spec)["consoleSize"] = {"height": height, "width": width}
    return apply


def with_user_id(uid: int, gid: int | None = None) -> SpecOpt:
    def apply(spec: Spec) -> None:
        _process(spec)["user"] = {"uid": uid, "gid": uid if gid is None else gid}
    return apply


def with_user(user: str) -> SpecOpt:
    """``uid``, ``uid:gid`` or ``root``; names other than root need the image's /etc/passwd,
    which a spec option cannot see: use numbers."""
    def apply(spec: Spec) -> None:
        name, _, group = user.partition(":")
        if name == "root":
            name = "0"
        if group == "root":
            group = "0"
        if not name.isdigit() or (group and not group.isdigit()):
            from flotilla.libs.errors import InvalidArgument
            raise InvalidArgument(f"user {user!r}: only numeric uid[:gid] or root is supported: invalid argument")
        with_user_id(int(name), int(group) if group else int(name))(spec)
    return apply


def with_no_new_privileges(value: bool = True) -> SpecOpt:
    def apply(spec: Spec) -> None:
        _process(spec)["noNewPrivileges"] = value
    return apply


# ---- image
@dataclass
class ImageConfig:
    """The ``config`` object of an OCI image configuration."""
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""

    @staticmethod
    def from_json(data: bytes | dict[str, Any]) -> "ImageConfig":
        doc = json.loads(data) if isinstance(data, (bytes, str)) else data
        c = doc.get("config") or {}
        return ImageConfig(list(c.get("Env") or []), list(c.get("Entrypoint") or []), list(c.get("Cmd") or []),
                           str(c.get("WorkingDir") or ""), str(c.get("User") or ""), dict(c.get("Labels") or {}),
                           str(c.get("StopSignal") or ""))


def with_image_config(config: ImageConfig, args: Iterable[str] = ()) -> SpecOpt:
    """The image's env, entrypoint + cmd (``args`` replace cmd), working dir and user."""
    def apply(spec: Spec) -> None:
        p = _process(spec)
        p["env"] = replace_or_append_env(config.env or [DEFAULT_PATH_ENV], p.get("env") or [])
        cmd = list(args) or config.cmd
        p["args"] = config.entrypoint + cmd
        p["cwd"] = config.working_dir or "/"
        if config.user:
            with_user(config.user)(spec)
        user = p.setdefault("user", {"uid": 0, "gid": 0})
        if user.get("uid") == 0:
            # containerd adds the groups /etc/group gives root; in every image with a standard
            # /etc/group that is root's own group (reading the image's files is not a spec option's job)
            user["additionalGids"] = [user.get("gid", 0)]
    return apply


# ---- root and mounts
def with_rootfs_path(path: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        spec.setdefault("root", {})["path"] = path
    return apply


def with_rootfs_readonly(spec: Spec) -> None:
    spec.setdefault("root", {})["readonly"] = True


def with_mounts(*mounts: dict[str, Any]) -> SpecOpt:
    """Append mounts (``{"destination", "type", "source", "options"}``)."""
    def apply(spec: Spec) -> None:
        spec.setdefault("mounts", []).extend(copy.deepcopy(list(mounts)))
    return apply


def bind_mount(source: str, destination: str, *, readonly: bool = False) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "ro" if readonly else "rw"]}


def parse_mount(text: str) -> dict[str, Any]:
    """ctr's ``--mount type=bind,src=/a,dst=/b,options=rbind:ro`` syntax."""
    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    src = fields.get("src") or fields.get("source", "")
    dst = fields.get("dst") or fields.get("destination") or fields.get("target", "")
    if not dst:
        from flotilla.libs.errors import InvalidArgument
        raise InvalidArgument(f"mount {text!r}: no destination: invalid argument")
    options = [o for o in fields.get("options", "").split(":") if o] or (["rbind", "rw"] if fields.get("type", "bind") == "bind" else [])
    return {"destination": dst, "type": fields.get("type", "bind"), "source": src, "options": options}


def without_mounts(*destinations: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        spec["mounts"] = [m for m in spec.get("mounts", []) if m.get("destination") not in destinations]
    return apply


def with_hostname(name: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        spec["hostname"] = name
    return apply


def with_host_hosts_file(spec: Spec) -> None:
    with_mounts(bind_mount("/etc/hosts", "/etc/hosts", readonly=True))(spec)


def with_host_resolvconf(spec: Spec) -> None:
    with_mounts(bind_mount("/etc/resolv.conf", "/etc/resolv.conf", readonly=True))(spec)


# ---- namespaces, devices, capabilities, resources
def _linux(spec: Spec) -> dict[str, Any]:
    return spec.setdefault("linux", {})


def with_host_namespace(kind: str) -> SpecOpt:
    """Share the host's namespace of ``kind`` (pid, ipc, uts, mount, network)."""
    def apply(spec: Spec) -> None:
        linux = _linux(spec)
        linux["namespaces"] = [n for n in linux.get("namespaces", []) if n.get("type") != kind]
    return apply


def with_linux_namespace(kind: str, path: str = "") -> SpecOpt:
    def apply(spec: Spec) -> None:
        linux = _linux(spec)
        rest = [n for n in linux.get("namespaces", []) if n.get("type") != kind]
        rest.append({"type": kind, **({"path": path} if path else {})})
        linux["namespaces"] = rest
    return apply


def with_default_unix_devices(spec: Spec) -> None:
    """The device cgroup rules containerd adds for /dev/null, zero, random, tty, ptmx, pts..."""
    rules = [(1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2)]
    devices = _linux(spec).setdefault("resources", {}).setdefault("devices", [])
    for major, minor in rules:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        devices.append(rule)


def _caps(spec: Spec) -> dict[str, list[str]]:
    return _process(spec).setdefault("capabilities", {})


def with_capabilities(*caps: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        c = _caps(spec)
        for kind in ("bounding", "effective", "permitted"):
            c[kind] = list(caps)
    return apply


def with_added_capabilities(*caps: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        c = _caps(spec)
        for kind in ("bounding", "effective", "permitted"):
            c[kind] = c.get(kind, []) + [x for x in caps if x not in c.get(kind, [])]
    return apply


def with_dropped_capabilities(*caps: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        c = _caps(spec)
        for kind in list(c):
            c[kind] = [x for x in c[kind] if x not in caps]
    return apply


def with_privileged(spec: Spec) -> None:
    """All capabilities, no masked or read-only paths, writable sysfs and cgroupfs."""
    from .caps import ALL_CAPS
    with_capabilities(*ALL_CAPS)(spec)
    linux = _linux(spec)
    linux["maskedPaths"], linux["readonlyPaths"] = [], []
    for m in spec.get("mounts", []):
        if m.get("type") in ("sysfs", "cgroup"):
            m["options"] = [o for o in m.get("options", []) if o != "ro"]


@dataclass
class Resources:
    memory: int | None = None          # bytes
    cpu_shares: int | None = None
    cpu_quota: int | None = None       # microseconds per period
    cpu_period: int | None = None
    cpuset_cpus: str | None = None
    pids: int | None = None


def with_resources(res: Resources) -> SpecOpt:
    def apply(spec: Spec) -> None:
        r = _linux(spec).setdefault("resources", {})
        if res.memory is not None:
            r.setdefault("memory", {})["limit"] = res.memory
        cpu = {k: v for k, v in (("shares", res.cpu_shares), ("quota", res.cpu_quota),
                                 ("period", res.cpu_period), ("cpus", res.cpuset_cpus)) if v is not None}
        if cpu:
            r.setdefault("cpu", {}).update(cpu)
        if res.pids is not None:
            r["pids"] = {"limit": res.pids}
    return apply


def with_memory_limit(limit: int) -> SpecOpt:
    return with_resources(Resources(memory=limit))


def with_annotations(annotations: dict[str, str]) -> SpecOpt:
    def apply(spec: Spec) -> None:
        spec.setdefault("annotations", {}).update(annotations)
    return apply


def with_cgroup(path: str) -> SpecOpt:
    def apply(spec: Spec) -> None:
        _linux(spec)["cgroupsPath"] = path
    return apply


def exec_process(spec: Spec, args: Iterable[str], *, tty: bool = False, env: Iterable[str] = (),
                 cwd: str = "") -> dict[str, Any]:
    """A process for Tasks.Exec, from the container's spec (as ctr's ``task exec`` builds it)."""
    p = copy.deepcopy(spec.get("process") or {})
    p["args"] = list(args)
    p["terminal"] = tty
    if env:
        p["env"] = replace_or_append_env(p.get("env") or [], env)
    if cwd:
        p["cwd"] = cwd
    return p


def host_env(*names: str) -> list[str]:
    return [f"{n}={os.environ[n]}" for n in names if n in os.environ]
