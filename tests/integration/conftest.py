"""Fixtures the whole-suite tests share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.helpers import build_rootfs


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    """A busybox root filesystem built offline (a module's tests share it)."""
    tmp = Path(tempfile.mkdtemp(prefix="flotilla-it-rootfs-"))
    yield build_rootfs(tmp / "rootfs")
    shutil.rmtree(tmp, ignore_errors=True)
