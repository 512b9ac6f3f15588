"""Issue 26's figures: networked containers, Flotilla against containerd.

Nothing here may touch the machine's own network, so everything networked happens in a
network namespace of the bench's own (the "host"): a second Flotilla suite runs in it (the
harness's runs in the root namespace: its containers would get their bridge there), and
every ctr runs in it through a runner process that also has a mount namespace of its own,
where /etc and /var/lib are overlaid so that ctr's own CNI finds its conflist in
/etc/cni/net.d and caches in /var/lib/cni without writing the machine's. containerd (the
harness's) needs no namespace: ``ctr run --cni`` is client-side, its plugins run in ctr's.

Figures: ``ctr run --rm --cni IMAGE true`` against each; the same networked run with
Flotilla server-side (the ``flotilla.network`` label) against containerd's ``--cni``; 50
networked detached containers, start all / stop all, the same way (containerd's ``ctr run -d
--cni`` never undoes its CNI setup, so its "stop" does less than Flotilla's detach).
The conflists are the same chain: Flotilla's bridge network (bridge, portmap, firewall,
bandwidth).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.harness import Target, Workload

NS = "bench-net"
NET = "benchnet"
DETACHED = 50
_RUNNER = r"""
import json, subprocess, sys, time
for cmd in json.loads(sys.argv[1]):
    subprocess.run(cmd, check=True)
print("ready", flush=True)
for line in sys.stdin:
    started = time.perf_counter()
    p = subprocess.run(json.loads(line), capture_output=True, text=True)
    print(json.dumps({"rc": p.returncode, "s": time.perf_counter() - started, "err": p.stderr[-400:]}), flush=True)
"""


class _World:
    """The bench's host namespace, its Flotilla suite and its ctr runner."""

    def __init__(self) -> None:
        from flotilla.testing import PrivateSuite
        self.base = Path(tempfile.mkdtemp(prefix="flotilla-bench-net-"))
        self.netns = f"flbench-{uuid.uuid4().hex[:6]}"
        self.private = PrivateSuite(self.base)
        self.private.suite.netns = self.netns
        self.runner: subprocess.Popen[str] | None = None

    def start(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True, capture_output=True)
        self.private.start(120)
        self._wait_for_network_service()
        created = self.cli("network", "create", NET, "--subnet", "10.91.128.0/20")
        if created.returncode != 0:
            raise RuntimeError(f"network create: {created.stderr}")
        conflist = json.loads(self.cli("network", "inspect", NET).stdout)[0]["conflist"]
        # ctr's --cni network: the same chain on a bridge and subnet of its own
        conflist["name"] = "ctrcni"
        conflist["plugins"][0]["bridge"] = "flctr0"
        conflist["plugins"][0]["ipam"] = {"type": "host-local", "ranges": [[{"subnet": "10.98.0.0/16"}]],
                                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.base / "ctr-ipam")}
        (self.base / "10-ctrcni.conflist").write_text(json.dumps(conflist))
        for d in ("etc-up", "etc-work", "lib-up", "lib-work"):
            (self.base / d).mkdir()
        mounts = [
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/etc,upperdir={self.base}/etc-up,workdir={self.base}/etc-work", "/etc"],
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/var/lib,upperdir={self.base}/lib-up,workdir={self.base}/lib-work", "/var/lib"],
            ["mkdir", "-p", "/etc/cni/net.d"], ["cp", str(self.base / "10-ctrcni.conflist"), "/etc/cni/net.d/"]]
        self.runner = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "--", "unshare", "--mount", "--propagation", "private",
             sys.executable, "-c", _RUNNER, json.dumps(mounts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.runner.stdout is not None
        if self.runner.stdout.readline().strip() != "ready":
            raise RuntimeError("the bench's ctr runner did not start")

    def _wait_for_network_service(self) -> None:
        import time
        deadline = time.monotonic() + 60
        while self.cli("network", "ls").returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the network service did not answer")
            time.sleep(0.2)

    @property
    def address(self) -> str:
        return self.private.address

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flotilla.cli", "--address", self.address, "--namespace", NS,
                               *args], capture_output=True, text=True, timeout=120)

    def ctr(self, address: str, *args: str) -> dict[str, Any]:
        """ctr against ``address`` in the runner: its exit code and its own time."""
        assert self.runner is not None and self.runner.stdin is not None and self.runner.stdout is not None
        argv = ["ctr", "--address", address, "--namespace", NS, *args]
        self.runner.stdin.write(json.dumps(argv) + "\n")
        self.runner.stdin.flush()
        return json.loads(self.runner.stdout.readline())

    def stop(self) -> None:
        from flotilla.testing.netns import remove
        from flotilla.testing.peers import _pids_naming, _with_descendants
        if self.runner is not None:
            self.runner.kill()
            self.runner.wait()
        with contextlib.suppress(Exception):
            self.private.stop(keep=True)
        for pid in _with_descendants(_pids_naming(str(self.base))):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(str(self.base))]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        remove([self.netns])
        shutil.rmtree(self.base, ignore_errors=True)


_world: _World | None = None
_IMAGE: dict[str, str] = {}


def world() -> _World:
    global _world
    if _world is None:
        w = _World()
        try:
            w.start()
        except BaseException:
            w.stop()
            raise
        atexit.register(w.stop)
        _world = w
    return _world


def _address(t: Target) -> str:
    """Flotilla's: the suite in the bench's namespace, not the harness's."""
    return world().address if t.name == "flotilla" else t.address


def setup(t: Target) -> None:
    from flotilla.testing import ctr

    from .images import _ref
    if t.name in _IMAGE:
        return
    ref = _ref("small")
    ctr(_address(t), "image", "pull", "--plain-http", ref, namespace=NS, check=True, timeout=300)
    _IMAGE[t.name] = ref


def _id(tag: str) -> str:
    return f"n{tag}-{uuid.uuid4().hex[:8]}"


def _clean(t: Target, id: str) -> None:
    w = world()
    for args in (("task", "kill", "-s", "9", id), ("task", "rm", "-f", id), ("containers", "rm", id)):
        w.ctr(_address(t), *args)


def _networked(t: Target, detach: bool, id: str) -> list[str]:
    """``ctr run`` of a networked container: Flotilla's by the label, containerd's by --cni."""
    how = ["--label", f"flotilla.network={NET}"] if t.name == "flotilla" else ["--cni"]
    tail = [_IMAGE[t.name], id, "/bin/sleep", "1000"] if detach else [_IMAGE[t.name], id, "/bin/true"]
    return ["run", "-d" if detach else "--rm", *how, *tail]


def run_cni(t: Target) -> float | None:
    id = _id("c")
    out = world().ctr(_address(t), "run", "--rm", "--cni", _IMAGE[t.name], id, "/bin/true")
    if out["rc"] != 0:
        _clean(t, id)
        return None
    return float(out["s"])


def run_networked(t: Target) -> float | None:
    id = _id("l")
    out = world().ctr(_address(t), *_networked(t, False, id))
    if out["rc"] != 0:
        _clean(t, id)
        return None
    return float(out["s"])


def detached(t: Target) -> dict[str, float] | None:
    w = world()
    ids = [_id("d") for _ in range(DETACHED)]
    start_all = stop_all = 0.0
    ok = True
    for id in ids:
        out = w.ctr(_address(t), *_networked(t, True, id))
        start_all += out["s"]
        ok = ok and out["rc"] == 0
    for id in ids:
        stop_all += w.ctr(_address(t), "task", "kill", "-s", "9", id)["s"]
    for id in ids:
        stop_all += w.ctr(_address(t), "task", "rm", "-f", id)["s"]
        stop_all += w.ctr(_address(t), "containers", "rm", id)["s"]
    if not ok:
        return None
    return {f"start {DETACHED} networked detached (s)": start_all, f"stop {DETACHED} (kill+rm) (s)": stop_all}


def workloads() -> list[Workload]:
    return [
        Workload("network/ctr run --rm --cni IMAGE true", run_cni, repeat=10, setup=setup),
        Workload("network/networked ctr run --rm IMAGE true (Flotilla: label, server-side; containerd: --cni)",
                 run_networked, repeat=10, setup=setup),
        Workload(f"network/{DETACHED} networked detached sleep (Flotilla: label; containerd: --cni)", detached,
                 repeat=1, unit="see figure", setup=setup),
    ]
