"""crun runs from a sealed copy held by the service, and then does not copy itself again."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from flotilla.services.runtime import sealed

_F_GET_SEALS = 1034
CRUN = shutil.which("crun")
pytestmark = pytest.mark.skipif(CRUN is None, reason="crun is not installed")


@pytest.fixture
def crun_copy(tmp_path: Path) -> Path:
    """A crun of our own, so the test may change it."""
    dest = tmp_path / "bin" / "crun"
    dest.parent.mkdir()
    shutil.copy2(CRUN, dest)  # type: ignore[arg-type]
    return dest


def _execs(program: str, args: list[str], tmp_path: Path) -> int:
    """How many times ``program args`` and its children called exec."""
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve,execveat", "-o", str(trace),
                    "--", program, *args], capture_output=True)
    return sum(1 for line in trace.read_text().splitlines() if "exec" in line and "= 0" in line)


def test_only_crun_is_sealed(tmp_path: Path) -> None:
    other = tmp_path / "runc"
    other.write_bytes(b"#!/bin/sh\n")
    assert sealed.exec_path(str(other)) == str(other)
    assert sealed.exec_path(str(tmp_path / "crun-missing" / "crun")) == str(tmp_path / "crun-missing" / "crun")


def test_sealed_copy_is_the_binary_and_cannot_change(crun_copy: Path) -> None:
    path = sealed.exec_path(str(crun_copy))
    assert path.startswith(f"/proc/{os.getpid()}/fd/")
    assert sealed.known_path(str(crun_copy)) == path
    fd = int(path.rsplit("/", 1)[1])
    assert fcntl.fcntl(fd, _F_GET_SEALS) == 0xF  # no writes, no growing or shrinking, no more seals
    assert Path(path).read_bytes() == crun_copy.read_bytes()
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"x", 0)
    assert sealed.exec_path(str(crun_copy)) == path  # unchanged binary: the same copy


def test_changed_binary_gets_a_new_copy(crun_copy: Path) -> None:
    first = sealed.exec_path(str(crun_copy))
    st = crun_copy.stat()
    os.utime(crun_copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = sealed.exec_path(str(crun_copy))
    assert second != first
    assert Path(first).exists()  # kept: a command may be starting from it


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_crun_from_the_sealed_copy_skips_its_own_copy(crun_copy: Path, tmp_path: Path) -> None:
    args = ["--root", str(tmp_path / "state"), "list"]
    plain = _execs(str(crun_copy), args, tmp_path)
    from_copy = _execs(sealed.exec_path(str(crun_copy)), args, tmp_path)
    assert (plain, from_copy) == (2, 1)
