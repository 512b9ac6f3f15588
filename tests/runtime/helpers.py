"""Helpers of the runtime tests, shared with tests/integration/test_runtime.py."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

APPLETS = ("sh", "echo", "sleep", "true", "false", "cat", "ls", "ps", "id", "env", "tty", "stty", "yes", "head",
           "dd", "wc", "kill", "mkdir", "touch", "hostname", "printf", "tr")


def build_rootfs(dest: Path) -> Path:
    """A minimal root filesystem: busybox-static and its applets."""
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "root"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", dest / "bin" / "busybox")
    for name in APPLETS:
        link = dest / "bin" / name
        if not link.is_symlink():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


@contextmanager
def temporary_rootfs(prefix: str) -> Iterator[Path]:
    """``build_rootfs`` in a temporary directory, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield build_rootfs(tmp / "rootfs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fifo_reader(path: str, out: list[bytes]) -> threading.Thread:
    """Read a FIFO to EOF on a thread, as ctr does with a task's stdout."""
    def run() -> None:
        with open(path, "rb") as f:
            out.append(f.read())
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t
