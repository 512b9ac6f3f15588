"""Fixtures of the network tests: a host namespace of the test's own, an engine working in
it, and sandboxes (processes in network namespaces of their own) to attach."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.libs import mount as mount_lib
from flotilla.services.network.engine import Engine

from .helpers import Host, mounts_under, wait_for


@pytest.fixture
def host() -> Iterator[Host]:
    with Host() as h:
        yield h


class Sandboxes:
    """Processes in network namespaces of their own: what a task's init is to the engine."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> int:
        proc = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        self.procs.append(proc)
        own = Path("/proc/thread-self/ns/net").stat().st_ino
        assert wait_for(lambda: _netns_ino(proc.pid) not in (None, own), timeout=10), "unshare did not start"
        return proc.pid

    def stop(self, pid: int) -> None:
        for proc in self.procs:
            if proc.pid == pid:
                proc.kill()
                proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)


def _netns_ino(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}/ns/net").stat().st_ino
    except OSError:
        return None


@pytest.fixture
def sandboxes() -> Iterator[Sandboxes]:
    s = Sandboxes()
    yield s
    s.close()


@pytest.fixture
def engine(host: Host, tmp_path: Path) -> Iterator[Engine]:
    """An engine whose plugins, tc and iptables work in ``host`` (the test's thread is in it)."""
    with host.entered():
        eng = Engine(tmp_path / "root", tmp_path / "state")
        try:
            yield eng
        finally:
            for rec in eng.records.all():  # whatever a failed test left attached
                eng.detach(rec.namespace, rec.container_id)
            for m in sorted(mounts_under(tmp_path), key=len, reverse=True):
                mount_lib.unmount(m, lazy=True)
