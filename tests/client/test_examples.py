"""The examples run as they are, against containerd and against Flotilla."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flotilla.client import Client

from .conftest import Images, cleanup

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=180)


@pytest.fixture
async def namespace(address: str) -> str:
    ns = "ex-" + uuid.uuid4().hex[:8]
    yield ns  # type: ignore[misc]
    async with Client(address, ns) as c:
        await cleanup(c)


@pytest.mark.parametrize("name,expect", [
    ("pull", "unpacked as snapshot sha256:"),
    ("container", "args: ['/bin/sh']"),
    ("run_task", "exited with status 3"),
    ("kill_task", "got SIGTERM\ntask example-"),
])
def test_example(name: str, expect: str, address: str, namespace: str, images: Images) -> None:
    res = example(name, "--address", address, "--namespace", namespace, "--image", images.ref("busybox"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert expect in res.stdout, res.stdout
    if name == "run_task":
        assert "hello from" in res.stdout


def test_connect(address: str) -> None:
    res = example("connect", "--address", address)
    assert res.returncode == 0 and "connected to" in res.stdout, res.stdout + res.stderr
