"""A whole Flotilla suite inside a network namespace of the test's own (its "host"), and
what the suite tests drive it with: Debian's ctr, the ``flotilla`` CLI, a busybox rootfs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from flotilla.client import Client, FlotillaError, Unavailable
from flotilla.cmd.network import call
from flotilla.testing import CTR, PrivateSuite
from flotilla.testing.peers import _pids_naming, _with_descendants

from .helpers import Host, allocations, mounts_under

APPLETS = ("sh", "sleep", "true", "echo", "cat", "nc", "ping", "ip", "dd", "head", "wc", "hostname")


def build_rootfs(dest: Path) -> Path:
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "root"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", dest / "bin" / "busybox")
    for name in APPLETS:
        (dest / "bin" / name).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


class NetSuite:
    """A PrivateSuite whose processes all run in ``host``'s network namespace."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.private = PrivateSuite()
        self.private.suite.netns = host.name
        self.suite = self.private.suite

    def start(self) -> None:
        self.private.start(120)
        deadline = time.monotonic() + 60
        while True:  # the gateway answers before every service does: wait for this one
            try:
                self.networks("List")
                return
            except (Unavailable, FlotillaError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """The suite, then whatever it or its containers left: processes naming its
        directories (supervisors and their containers), mounts (held namespaces)."""
        base = self.private.base
        with contextlib.suppress(Exception):
            self.private.stop(keep=True)
        for pid in _with_descendants(_pids_naming(str(base))):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for m in sorted(mounts_under(base), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)

    @property
    def address(self) -> str:
        return self.private.address

    def ctr(self, *args: str, namespace: str = "default", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Debian's ctr, run in the host's namespace."""
        return subprocess.run(self.host.command(CTR, "--address", self.address, "--namespace", namespace, *args),
                              capture_output=True, text=True, timeout=timeout)

    def cli(self, *args: str, namespace: str = "default") -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.host.command(sys.executable, "-m", "flotilla.cli", "--address", self.address,
                                                "--namespace", namespace, *args),
                              capture_output=True, text=True, timeout=120)

    def networks(self, method: str, namespace: str = "default", **request: object) -> object:
        """One of the gateway's Networks methods, as the CLI calls it (errors as their classes)."""
        import asyncio

        async def go() -> object:
            async with Client(self.address, namespace) as client:
                return await call(client, method, dict(request))
        return asyncio.run(go())

    # -- what may be left behind ----------------------------------------------------------

    def leftovers(self, rules_before: str) -> dict[str, object]:
        root, state = self.suite.root / "network", self.suite.state / "network"
        pins = state / "netns"
        before = set(rules_before.splitlines())
        return {"veths": self.host.links("veth"), "ifbs": self.host.links("ifb"),
                "allocations": allocations(root / "ipam"),
                "records": sorted(p.name for p in (root / "tasks").glob("*.json")),
                "pins": sorted(os.listdir(pins)) if pins.exists() else [],
                "mounts": mounts_under(state),
                "rules": [line for line in self.host.rules().splitlines() if line not in before]}


CLEAN = {"veths": [], "ifbs": [], "allocations": [], "records": [], "pins": [], "mounts": [], "rules": []}


@contextlib.contextmanager
def started(host: Host) -> Iterator[NetSuite]:
    s = NetSuite(host)
    try:
        s.start()
        yield s
    finally:
        s.stop()
