"""The common service entry point's process settings."""

from __future__ import annotations

import subprocess
import sys


def test_keep_freed_memory_is_applied_on_glibc() -> None:
    # a fresh interpreter: the settings are process-wide
    code = "from flotilla.libs.service import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"  # Debian's libc is glibc: mallopt takes both settings
