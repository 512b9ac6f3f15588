"""Issue 6 figures: task start/exec latency, 50 detached containers, supervisor memory.

Every figure runs the same ctr commands against Flotilla and containerd. ``ctr run --rm IMAGE``
is the issue's own command: the busybox-static image pulled from the bench's registry, so
ctr also resolves the image, prepares and removes a snapshot and the runtime mounts it. The
other figures use a busybox-static rootfs built here (``ctr run --rootfs``), which leaves
the image and snapshot calls out. ``runc run`` / ``crun run`` of a ready bundle give
the floor no daemon can beat. crun variants use ``--runc-binary crun`` (both sides honour it);
containerd's is skipped (None) where crun refuses the host (hybrid cgroups with a v2
controller). Flotilla runs crun there in a mount namespace without the cgroup2 mount, and so
does the crun floor (``unshare``, a few ms of its own).
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.harness import OPEN_BUS, Target, Workload

_ROOTFS: Path | None = None
DETACHED = 50


def _rootfs() -> Path:
    global _ROOTFS
    if _ROOTFS is None:
        from flotilla.testing.images import write_rootfs
        base = tempfile.mkdtemp(prefix="flotilla-bench-rootfs-")
        atexit.register(shutil.rmtree, base, True)
        _ROOTFS = write_rootfs(Path(base) / "rootfs")
    return _ROOTFS


def _id(tag: str) -> str:
    return f"b{tag}-{uuid.uuid4().hex[:8]}"


def _clean(t: Target, id: str, namespace: str = "default") -> None:
    t.ctr("task", "kill", "-s", "9", id, namespace=namespace)
    t.ctr("task", "rm", "-f", id, namespace=namespace)
    t.ctr("containers", "rm", id, namespace=namespace)


def run_rm(binary: str | None):  # type: ignore[no-untyped-def]
    """``binary`` None: each daemon's default runtime (containerd: runc; Flotilla: crun where it
    loses nothing, as here, see docs/runtime.md)."""
    def run(t: Target) -> float | None:
        id = _id("rm")
        extra = ["--runc-binary", binary] if binary else []
        started = time.perf_counter()
        res = t.ctr("run", "--rm", *extra, "--rootfs", str(_rootfs()), id, "/bin/true")
        took = time.perf_counter() - started
        if res.returncode != 0:
            _clean(t, id)
            return None
        return took
    return run


IMAGE_NS = "bench-run-image"
_IMAGE: dict[str, str] = {}


def image_setup(t: Target) -> None:
    from .images import _ref
    ref = _ref("small")  # busybox-static, pushed to the bench's registry
    t.ctr("image", "pull", "--plain-http", ref, namespace=IMAGE_NS, check=True, timeout=300)
    _IMAGE[t.name] = ref


def run_rm_image(t: Target) -> float | None:
    id = _id("ri")
    started = time.perf_counter()
    res = t.ctr("run", "--rm", _IMAGE[t.name], id, "/bin/true", namespace=IMAGE_NS)
    took = time.perf_counter() - started
    if res.returncode != 0:
        _clean(t, id, IMAGE_NS)
        return None
    return took


def image_teardown(t: Target) -> None:
    t.ctr("image", "rm", "--sync", _IMAGE.pop(t.name), namespace=IMAGE_NS)
    remove_namespace_cgroups(IMAGE_NS)


def remove_namespace_cgroups(namespace: str) -> None:
    """Both daemons put a namespace's containers under /<namespace> in every hierarchy and
    leave that parent behind; remove it once it is empty (a busy one stays)."""
    for parent in Path("/sys/fs/cgroup").glob(f"*/{namespace}"):
        for d in sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [parent]:
            try:
                d.rmdir()
            except OSError:
                pass


def _view(binary: str) -> list[str]:
    """What Flotilla's supervisor does for crun on a hybrid host (``flotilla-shim -u``)."""
    from flotilla.services.runtime import cgroups
    if binary != "crun" or not cgroups.hybrid_with_v2_controllers():
        return []
    return ["unshare", "-m", "--propagation", "slave", "sh", "-c",
            'umount -l /sys/fs/cgroup/unified && exec "$@"', "view"]


def floor(binary: str):  # type: ignore[no-untyped-def]
    """``<runtime> run`` of a ready bundle: no daemon, no supervisor."""
    def run(t: Target) -> float | None:
        base = Path(tempfile.mkdtemp(prefix="flotilla-bench-bundle-", dir=t.base))
        subprocess.run(["runc", "spec"], cwd=base, check=True)
        spec = json.loads((base / "config.json").read_text())
        spec["root"] = {"path": str(_rootfs()), "readonly": True}
        spec["process"].update(args=["/bin/true"], terminal=False)
        spec["linux"]["cgroupsPath"] = f"/flotilla-bench/{base.name}"
        (base / "config.json").write_text(json.dumps(spec))
        id = base.name
        started = time.perf_counter()
        res = subprocess.run([*_view(binary), binary, "--root", str(base / "root"), "run", "--bundle", str(base), id],
                             stdin=subprocess.DEVNULL, capture_output=True)
        took = time.perf_counter() - started
        subprocess.run([binary, "--root", str(base / "root"), "delete", "-f", id], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        for d in Path("/sys/fs/cgroup").glob("*/flotilla-bench"):
            try:
                d.rmdir()
            except OSError:
                pass
        return took if res.returncode == 0 else None
    return run


def _mib(pid: int) -> tuple[float, float]:
    """RSS and PSS of one process, MiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:"):
                values[parts[0]] = int(parts[1]) / 1024
    return values.get("Rss:", 0.0), values.get("Pss:", 0.0)


def supervisors(t: Target) -> list[int]:
    """The per-container supervisors of this target: flotilla-shim under the suite's state dir,
    or containerd-shim-runc-v2 serving the peer's socket."""
    marker = str(getattr(getattr(t.handle, "suite", None), "state", "")) if t.name == "flotilla" else t.address
    name = "flotilla-shim" if t.name == "flotilla" else "containerd-shim-runc-v2"
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, stat, args = line.split(None, 2)
        if name in args.split(" ", 1)[0] and marker in args and not stat.startswith("Z"):
            pids.append(int(pid))
    return pids


def detached(t: Target) -> dict[str, float]:
    """Start DETACHED ``sleep`` containers, weigh their supervisors, stop them all."""
    ids = [_id("d") for _ in range(DETACHED)]
    started = time.perf_counter()
    for id in ids:
        t.ctr("run", "-d", "--rootfs", str(_rootfs()), id, "/bin/sleep", "1000", check=True)
    start_all = time.perf_counter() - started
    sizes = [_mib(pid) for pid in supervisors(t)]
    per = len(sizes) or 1
    rss = sum(s[0] for s in sizes) / per
    pss = sum(s[1] for s in sizes) / per
    started = time.perf_counter()
    for id in ids:
        t.ctr("task", "kill", "-s", "9", id, check=True)
    for id in ids:
        t.ctr("task", "rm", "-f", id)
        t.ctr("containers", "rm", id)
    stop_all = time.perf_counter() - started
    return {f"start {DETACHED} detached (s)": start_all, "supervisor RSS per container (MiB)": rss,
            "supervisor PSS per container (MiB)": pss, f"stop {DETACHED} (kill+rm) (s)": stop_all}


_EXEC: dict[str, str] = {}


def exec_setup(t: Target) -> None:
    id = _id("x")
    t.ctr("run", "-d", "--rootfs", str(_rootfs()), id, "/bin/sleep", "1000", check=True)
    _EXEC[t.name] = id


def exec_true(t: Target) -> float:
    id = _EXEC[t.name]
    started = time.perf_counter()
    t.ctr("task", "exec", "--exec-id", uuid.uuid4().hex[:8], id, "/bin/true", check=True)
    return time.perf_counter() - started


def exec_teardown(t: Target) -> None:
    _clean(t, _EXEC.pop(t.name))


def workloads() -> list[Workload]:
    return [
        Workload("runtime/ctr run --rm IMAGE true (default runtime)", run_rm_image, repeat=20,
                 setup=image_setup, teardown=image_teardown, targets=("flotilla", "containerd", OPEN_BUS)),
        Workload("runtime/ctr run --rm true (default runtime)", run_rm(None), repeat=20),
        Workload("runtime/ctr run --rm true (runc)", run_rm("runc"), repeat=20),
        Workload("runtime/ctr run --rm true (crun)", run_rm("crun"), repeat=20),
        Workload("runtime/runc run floor", floor("runc"), repeat=20, targets=("flotilla",)),
        Workload("runtime/crun run floor", floor("crun"), repeat=20, targets=("flotilla",)),
        Workload("runtime/ctr task exec true", exec_true, repeat=20, setup=exec_setup, teardown=exec_teardown),
        Workload("runtime/50 detached sleep", detached, repeat=2, unit="see figure",
                 teardown=lambda t: remove_namespace_cgroups("default")),
    ]
