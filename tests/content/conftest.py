"""Fixtures: the content service as its own process(es) on a private nats-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flotilla.libs.api.content import ContentClient
from flotilla.libs.bus import Bus


class ContentProcs:
    """One store root, one prefix, any number of content service processes on it."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.base = Path(tempfile.mkdtemp(prefix="flotilla-content-"))
        self.prefix = "ct" + uuid.uuid4().hex[:8]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "FLOTILLA_NATS_URL": self.nats_url, "FLOTILLA_ROOT": str(self.base / "root"),
               "FLOTILLA_STATE": str(self.base / "state"), "FLOTILLA_PREFIX": self.prefix,
               "FLOTILLA_METRICS_PORT": "0", "FLOTILLA_CONFIG": "/nonexistent", "PYTHONUNBUFFERED": "1"}
        log = open(self.base / f"content-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "flotilla.services.content"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self._wait_ready(len([p for p in self.procs if p.poll() is None]))
        return proc

    def _wait_ready(self, count: int) -> None:
        import asyncio

        async def pings() -> int:
            bus = await Bus.connect(self.nats_url, "probe")
            try:
                inbox = bus.nc.new_inbox()
                sub = await bus.nc.subscribe(inbox)
                await bus.nc.publish(f"{self.prefix}.content.ping", b"", reply=inbox)
                seen = 0
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    try:
                        msg = await sub.next_msg(timeout=max(0.01, deadline - time.monotonic()))
                    except Exception:
                        break
                    if msg.data:  # not NATS' empty "no responders" status
                        seen += 1
                return seen
            finally:
                await bus.close()

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # in a thread of its own: start() may be called from inside a running loop
            with ThreadPoolExecutor(1) as pool:
                seen = pool.submit(asyncio.run, pings()).result()
            if seen >= count:
                return
            time.sleep(0.05)
        raise TimeoutError(f"content service did not start; see {self.base}")

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        import shutil
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def content_procs(nats_url: str) -> Iterator[ContentProcs]:
    procs = ContentProcs(nats_url)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def content_service(content_procs: ContentProcs) -> ContentProcs:
    content_procs.start()
    return content_procs


@pytest.fixture
def client(bus: Bus, content_service: ContentProcs) -> ContentClient:
    return ContentClient(bus, content_service.prefix)


@pytest.fixture
def remote_client(bus: Bus, content_service: ContentProcs) -> ContentClient:
    """Bytes over NATS, as from another host."""
    return ContentClient(bus, content_service.prefix, local=False)
