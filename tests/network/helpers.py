"""A "host" for the network tests: a network namespace of the test's own, so bridges,
veths and iptables rules never touch the machine's. The engine tests run the test's own
thread in it (setns); the suite tests run a whole suite in it (``Suite.netns``)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from flotilla.testing import netns as netns_mod

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class Host:
    """``ip netns add`` of a uniquely named namespace (lo up), removed with whatever runs in it."""

    def __init__(self, prefix: str = "flnet") -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.name = f"{prefix}-{self.tag}"

    def __enter__(self) -> "Host":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        netns_mod.remove([self.name])

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*argv), capture_output=True, text=True, check=check, timeout=timeout,
                              input=input)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This thread (and the processes it starts) in the namespace, back after."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(target)

    # -- what the tests look at --------------------------------------------------------------

    def links(self, kind: str = "") -> list[str]:
        out = self.run("ip", "-j", "link", "show", *(["type", kind] if kind else [])).stdout
        return sorted(link["ifname"] for link in json.loads(out or "[]"))

    def rules(self) -> str:
        """Every iptables rule of the namespace, counters left out."""
        text = self.run("iptables-save").stdout
        return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#"))


def allocations(ipam_dir: Path) -> list[str]:
    """host-local's allocated addresses (files named by address) under its data dir."""
    return sorted(str(p.relative_to(ipam_dir)) for p in ipam_dir.glob("*/*")
                  if p.name not in ("lock",) and not p.name.startswith("last_reserved_ip"))


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def wait_for(check, timeout: float = 30.0, every: float = 0.05):  # type: ignore[no-untyped-def]
    """``check()``'s first truthy value within ``timeout`` seconds, else its last."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
