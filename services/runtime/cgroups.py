"""cgroup statistics of a task, in the shape of containerd's io.containerd.cgroups.v1.Metrics
(field names as in containerd/cgroups' metrics.proto), and OOM-kill counts."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

ROOT = Path("/sys/fs/cgroup")
_USER_HZ = os.sysconf("SC_CLK_TCK")
_MEMSTAT = {"pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out", "pgfault": "pg_fault", "pgmajfault": "pg_maj_fault",
            "hierarchical_memsw_limit": "hierarchical_swap_limit", "total_pgpgin": "total_pg_pg_in",
            "total_pgpgout": "total_pg_pg_out", "total_pgfault": "total_pg_fault",
            "total_pgmajfault": "total_pg_maj_fault"}
_MEMKEYS = {"cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback", "pg_pg_in", "pg_pg_out", "pg_fault",
            "pg_maj_fault", "inactive_anon", "active_anon", "inactive_file", "active_file", "unevictable",
            "hierarchical_memory_limit", "hierarchical_swap_limit", "total_cache", "total_rss", "total_rss_huge",
            "total_mapped_file", "total_dirty", "total_writeback", "total_pg_pg_in", "total_pg_pg_out",
            "total_pg_fault", "total_pg_maj_fault", "total_inactive_anon", "total_active_anon",
            "total_inactive_file", "total_active_file", "total_unevictable"}
U64 = (1 << 64) - 1


def unified() -> bool:
    return (ROOT / "cgroup.controllers").exists()


@functools.cache
def hybrid_with_v2_controllers() -> bool:
    """v1 hierarchies plus a cgroup2 mount at ``unified`` that holds a controller (this host
    binds hugetlb there): crun refuses such a host, runc does not."""
    try:
        return not unified() and bool((ROOT / "unified" / "cgroup.controllers").read_text().split())
    except OSError:
        return False


def _int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return U64
    try:
        return min(int(text), U64)
    except ValueError:
        return None


def _kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def v1_dir(controller: str, cgroups_path: str) -> Path:
    return ROOT / controller / cgroups_path.lstrip("/")


def _entry(mem: Path, prefix: str) -> dict[str, int]:
    return {k: v for k, v in (("limit", _int(mem / f"{prefix}.limit_in_bytes")),
                              ("usage", _int(mem / f"{prefix}.usage_in_bytes")),
                              ("max", _int(mem / f"{prefix}.max_usage_in_bytes")),
                              ("failcnt", _int(mem / f"{prefix}.failcnt"))) if v is not None}


def v1_stats(cgroups_path: str) -> dict[str, Any]:
    """Read the v1 hierarchies of one cgroup path (``/default/ctr-id`` as runc uses it)."""
    stats: dict[str, Any] = {}
    pids = v1_dir("pids", cgroups_path)
    current = _int(pids / "pids.current")
    if current is not None:
        limit = _int(pids / "pids.max")
        stats["pids"] = {"current": current, "limit": 0 if limit in (None, U64) else limit}
    acct = v1_dir("cpuacct", cgroups_path)
    total = _int(acct / "cpuacct.usage")
    if total is not None:
        ticks = _kv(acct / "cpuacct.stat")
        try:
            per_cpu = [int(x) for x in (acct / "cpuacct.usage_percpu").read_text().split()]
        except OSError:
            per_cpu = []
        ns_per_tick = 1_000_000_000 // _USER_HZ
        throttle = _kv(v1_dir("cpu", cgroups_path) / "cpu.stat")
        stats["cpu"] = {
            "usage": {"total": total, "kernel": ticks.get("system", 0) * ns_per_tick,
                      "user": ticks.get("user", 0) * ns_per_tick, "per_cpu": per_cpu},
            "throttling": {"periods": throttle.get("nr_periods", 0),
                           "throttled_periods": throttle.get("nr_throttled", 0),
                           "throttled_time": throttle.get("throttled_time", 0)},
        }
    mem = v1_dir("memory", cgroups_path)
    raw = _kv(mem / "memory.stat")
    if raw:
        memory: dict[str, Any] = {}
        for key, value in raw.items():
            name = _MEMSTAT.get(key, key)
            if name in _MEMKEYS:
                memory[name] = min(max(value, 0), U64)
        memory["usage"] = _entry(mem, "memory")
        memory["swap"] = _entry(mem, "memory.memsw")
        memory["kernel"] = _entry(mem, "memory.kmem")
        memory["kernel_tcp"] = _entry(mem, "memory.kmem.tcp")
        stats["memory"] = memory
        oom = _kv(mem / "memory.oom_control")
        stats["memory_oom_control"] = {"oom_kill_disable": oom.get("oom_kill_disable", 0),
                                       "under_oom": oom.get("under_oom", 0), "oom_kill": oom.get("oom_kill", 0)}
    return stats


def v2_stats(cgroups_path: str) -> dict[str, Any]:
    """The unified hierarchy's counters, in containerd's io.containerd.cgroups.v2.Metrics names."""
    d = ROOT / cgroups_path.lstrip("/")
    stats: dict[str, Any] = {}
    current = _int(d / "pids.current")
    if current is not None:
        limit = _int(d / "pids.max")
        stats["pids"] = {"current": current, "limit": 0 if limit in (None, U64) else limit}
    cpu = _kv(d / "cpu.stat")
    if cpu:
        stats["cpu"] = {"usage_usec": cpu.get("usage_usec", 0), "user_usec": cpu.get("user_usec", 0),
                        "system_usec": cpu.get("system_usec", 0), "nr_periods": cpu.get("nr_periods", 0),
                        "nr_throttled": cpu.get("nr_throttled", 0), "throttled_usec": cpu.get("throttled_usec", 0)}
    usage = _int(d / "memory.current")
    if usage is not None:
        stats["memory"] = {"usage": usage, "usage_limit": _int(d / "memory.max") or 0}
    return stats


def oom_kills(cgroups_path: str) -> int:
    """How many processes the kernel OOM-killed in this cgroup."""
    if unified():
        return _kv(ROOT / cgroups_path.lstrip("/") / "memory.events").get("oom_kill", 0)
    return _kv(v1_dir("memory", cgroups_path) / "memory.oom_control").get("oom_kill", 0)


def stats(cgroups_path: str) -> tuple[str, dict[str, Any]]:
    if unified():
        return "v2", v2_stats(cgroups_path)
    return "v1", v1_stats(cgroups_path)


class JoinFailed(Exception):
    """A supervisor could not join the client's ShimCgroup; the text is containerd's."""


def join(path: str, pid: int) -> None:
    """Move ``pid`` into the existing cgroup ``path`` (runc options' ShimCgroup), as
    containerd's shim start does: on cgroup v2 the unified hierarchy; on v1 every hierarchy
    that has the path, at least one (containerd's cgroups.Load), never the hybrid ``unified``."""
    if unified():
        if not path.startswith("/"):
            raise JoinFailed(f"failed to load cgroup {path}: cgroups: invalid group path")
        targets = [ROOT / path.lstrip("/")]
    else:
        seen: set[Path] = set()
        targets = []
        for h in sorted(ROOT.iterdir()):
            real = h.resolve()  # cpu and cpuacct are links to one hierarchy
            if h.name == "unified" or real in seen or not (real / path.lstrip("/")).is_dir():
                continue
            seen.add(real)
            targets.append(real / path.lstrip("/"))
        if not targets:
            raise JoinFailed(f"failed to load cgroup {path}: cgroups: cgroup deleted")
    for d in targets:
        try:
            (d / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise JoinFailed(f"failed to join cgroup {path}: open {d / 'cgroup.procs'}: "
                             f"{os.strerror(exc.errno or 0).lower()}") from None


def _expand_slice(slice_: str) -> str:
    """systemd's slice nesting, as runc expands it: ``a-b.slice`` is ``/a.slice/a-b.slice``."""
    name = slice_.removesuffix(".slice")
    if name == "-" or not name:
        return ""
    path, prefix = "", ""
    for part in name.split("-"):
        path += f"/{prefix}{part}.slice"
        prefix += f"{part}-"
    return path


def systemd_path(cgroups_path: str) -> str:
    """Where runc's systemd driver puts ``slice:prefix:name`` (what ``--systemd-cgroup`` takes),
    so the task's metrics and OOM counts are read from the right directory; any other path is
    returned as it is."""
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        return cgroups_path
    slice_, prefix, name = parts
    unit = name if name.endswith(".slice") else f"{prefix}-{name}.scope"
    return f"{_expand_slice(slice_ or 'system.slice')}/{unit}"
