"""The common service entry point's process settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flotilla.testing import nats_server


def test_keep_freed_memory_is_applied_on_glibc() -> None:
    # a fresh interpreter: the settings are process-wide
    code = "from flotilla.libs.process import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"  # Debian's libc is glibc: mallopt takes both settings


# A service whose one method never answers by itself (as a task's Wait), run by service.run
# in its own process: at SIGTERM it gives that call its grace once, then ends.
_NEVER_ANSWERS = """
import asyncio, sys
from flotilla.libs.service import run

async def setup(bus, cfg):
    async def wait_forever(_request):
        print("called", flush=True)
        await asyncio.Event().wait()
    await bus.serve("t.never", wait_forever)
    print("serving", flush=True)
    return None

run("never", setup)
"""


@pytest.mark.parametrize("grace", ["0", "1.5"])
def test_a_stopping_service_gives_an_endless_call_one_grace_then_exits(grace: str, tmp_path: Path) -> None:
    with nats_server() as url:
        env = {**os.environ, "FLOTILLA_NATS_URL": url, "FLOTILLA_STATE": str(tmp_path / "state"),
               "FLOTILLA_ROOT": str(tmp_path / "root"), "FLOTILLA_DRAIN_GRACE": grace, "FLOTILLA_METRICS_PORT": "0"}
        proc = subprocess.Popen([sys.executable, "-c", _NEVER_ANSWERS], env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "serving"
            caller = subprocess.Popen([sys.executable, "-c", _CALL.format(url=url)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            assert proc.stdout.readline().strip() == "called"
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            took = time.monotonic() - stopped_at
            caller.kill()
            caller.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # its grace once, not twice (10 s with the default 5 s grace: supervisord's SIGKILL)
    assert took < float(grace) + 2.5


_CALL = """
import asyncio
from flotilla.libs.bus import Bus

async def main():
    bus = await Bus.connect("{url}", "caller")
    await bus.request("t.never", {{}}, timeout=60, idempotent=True)

asyncio.run(main())
"""
