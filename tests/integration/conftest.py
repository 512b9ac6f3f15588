"""Fixtures the whole-suite tests share."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.testing import PrivateSuite
from tests.runtime.helpers import temporary_rootfs


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    """A busybox root filesystem built offline (a module's tests share it)."""
    with temporary_rootfs("flotilla-it-rootfs-") as path:
        yield path


@pytest.fixture(scope="module")
def no_supervisor_left(suite: PrivateSuite) -> Iterator[None]:
    """After a module's tests no container of theirs may run: every supervisor under the
    suite's runtime state must be gone. Those found are reported, and the containers the
    OCI runtimes still hold are deleted. Modules that start containers use it."""
    yield
    state = str(suite.suite.state / "runtime")
    left = []
    for line in subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout.splitlines():
        pid, stat, args = line.split(None, 2)
        if "flotilla-shim" in args and state in args and not stat.startswith("Z"):
            left.append(args)
    for ns_root in (suite.suite.state / "runtime" / "oci").glob("*/*"):
        binary = ns_root.parent.name
        for id in subprocess.run([binary, "--root", str(ns_root), "list", "-q"], capture_output=True,
                                 text=True).stdout.split():
            subprocess.run([binary, "--root", str(ns_root), "delete", "-f", id], capture_output=True)
    assert left == []
