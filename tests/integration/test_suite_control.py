"""`flotilla up/down/status` (what `make up`/`make down` run) and each process' /metrics."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

import pytest

from flotilla.deploy import free_port
from flotilla.testing import ctr

FLOTILLA = str(Path(sys.executable).with_name("flotilla"))


def _env(base: Path, metrics_base: int) -> dict[str, str]:
    return {**os.environ, "FLOTILLA_ROOT": str(base / "root"), "FLOTILLA_STATE": str(base / "state"),
            "FLOTILLA_NATS_PORT": str(free_port()), "FLOTILLA_METRICS_BASE": str(metrics_base),
            "FLOTILLA_PREFIX": "fc" + uuid.uuid4().hex[:6]}


def _metrics_base() -> int:
    """A run of free ports, one per program of the suite, and the second gateway's (+100)."""
    for _ in range(50):
        base = random.randrange(20000, 60000)
        try:
            socks = []
            for port in (*range(base, base + 8), base + 100):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def test_up_down_keeps_data_and_serves_metrics() -> None:
    base = Path(tempfile.mkdtemp(prefix="flotilla-cli-"))
    metrics = _metrics_base()
    env = _env(base, metrics)
    sock = str(base / "state" / "flotilla.sock")
    try:
        up = subprocess.run([FLOTILLA, "up"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        assert "flotilla is up" in up.stdout
        # "up" returns once every service answers its ping, so each is usable at once
        for args in (("snapshots", "ls"), ("content", "ls"), ("leases", "ls"), ("tasks", "ls"), ("images", "ls")):
            res = ctr(sock, *args)
            assert res.returncode == 0, (args, res.stderr)
        status = subprocess.run([FLOTILLA, "status"], env=env, capture_output=True, text=True, timeout=30)
        assert all(f"{p} " in status.stdout for p in ("nats", "metadata", "gateway:gateway-0", "gateway:gateway-1")), \
            status.stdout
        assert status.stdout.count("RUNNING") == len(status.stdout.strip().splitlines())
        ctr(sock, "namespaces", "create", "kept", "a=b", check=True)

        # every process serves its own /metrics; the gateways' count requests by method and code
        # (two gateways, the second on the program's port + 100: either took ctr's call)
        body = "".join(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
                       for port in (metrics, metrics + 100))
        assert 'flotilla_requests_total{code="0",method="Namespaces.Create"}' in body
        assert "flotilla_request_seconds_bucket" in body and "flotilla_nats_reconnects_total" in body
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics + 1}/metrics", timeout=10).read().decode()
        assert 'method="namespaces.create"' in body

        down = subprocess.run([FLOTILLA, "down"], env=env, capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        with socket.socket(socket.AF_UNIX) as probe, pytest.raises((ConnectionRefusedError, FileNotFoundError)):
            probe.connect(sock)  # nobody listens any more
        assert subprocess.run([FLOTILLA, "status"], env=env, capture_output=True, timeout=30).returncode == 3

        subprocess.run([FLOTILLA, "up"], env=env, check=True, capture_output=True, timeout=120)
        assert ["kept", "a=b"] in [l.split() for l in ctr(sock, "namespaces", "ls", check=True).stdout.splitlines()]
    finally:
        subprocess.run([FLOTILLA, "down"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
