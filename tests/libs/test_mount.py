"""libs.mount on real mounts: options split into flags and data as containerd does, read-only
binds that are read-only, stacked mounts all undone, and a busy one undone lazily."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flotilla.libs import mount as mnt


@dataclass
class M:
    type: str
    source: str
    options: list[str] = field(default_factory=list)


def _mount_line(target: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        lines = [line.split() for line in f if line.split()[4] == str(target)]
    assert lines, f"{target} is not mounted"
    return lines[-1]


def test_options_split_into_flags_propagation_and_data() -> None:
    flags, propagation, data = mnt.parse_options(
        ["ro", "rbind", "nosuid", "rw", "noexec", "index=off", "lowerdir=/a:/b", "rprivate"])
    assert flags == mnt.MS_BIND | mnt.MS_REC | mnt.MS_NOSUID | mnt.MS_NOEXEC  # "rw" cleared "ro"
    assert propagation == mnt.MS_PRIVATE | mnt.MS_REC
    assert data == "index=off,lowerdir=/a:/b"


def test_bind_ro_is_read_only_and_everything_stacked_is_undone(tmp_path: Path) -> None:
    src, target = tmp_path / "src", tmp_path / "target"
    src.mkdir()
    target.mkdir()
    (src / "file").write_text("x")
    try:
        mnt.mount_all([M("bind", str(src), ["ro", "rbind"]), M("tmpfs", "tmpfs", ["size=1m", "nosuid"])],
                      str(target))
        assert "nosuid" in _mount_line(target)[5]
        mnt.unmount(str(target))  # the tmpfs; the read-only bind is below it
        assert (target / "file").read_text() == "x"
        with pytest.raises(OSError) as info:
            (target / "new").write_text("y")
        assert info.value.errno == errno.EROFS
        mnt.mount(M("tmpfs", "tmpfs", []), str(target))
        mnt.unmount_all(str(target))
        assert not mnt.is_mounted(str(target))
        mnt.unmount_all(str(target))  # nothing mounted: nothing to do
    finally:
        mnt.unmount_all(str(target), lazy_if_busy=True)


def test_a_bad_mount_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(OSError) as info:
        mnt.mount_all([M("tmpfs", "tmpfs", []), M("bind", str(tmp_path / "missing"), ["rbind"])], str(target))
    assert info.value.errno == errno.ENOENT
    assert "No such file or directory" in str(info.value)
    assert not mnt.is_mounted(str(target))  # the first was undone


def test_busy_mount_is_detached_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    mnt.mount(M("tmpfs", "tmpfs", []), str(target))
    fd = os.open(target, os.O_RDONLY)
    cwd = os.getcwd()
    os.chdir(target)  # a mount with a working directory in it is busy
    try:
        with pytest.raises(OSError) as info:
            mnt.unmount_all(str(target))
        assert info.value.errno == errno.EBUSY
        mnt.unmount_all(str(target), lazy_if_busy=True)
        assert not mnt.is_mounted(str(target))
    finally:
        os.chdir(cwd)
        os.close(fd)
