"""Fixtures of the runtime tests: a busybox rootfs, OCI specs, an engine in a temp state dir."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from flotilla.libs.api.events import EventRecord
from flotilla.libs.wire import to_wire
from flotilla.services.runtime import supervisor
from flotilla.services.runtime.engine import Engine

from .helpers import temporary_rootfs

_BASE_SPEC: dict[str, Any] = {}


def base_spec() -> dict[str, Any]:
    if not _BASE_SPEC:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["runc", "spec"], cwd=tmp, check=True)
            _BASE_SPEC.update(json.loads((Path(tmp) / "config.json").read_text()))
    return json.loads(json.dumps(_BASE_SPEC))


def make_spec(root: str, args: list[str], *, terminal: bool = False, cgroup: str = "",
              readonly: bool = False) -> bytes:
    spec = base_spec()
    spec["root"] = {"path": root, "readonly": readonly}
    spec["process"]["args"] = args
    spec["process"]["terminal"] = terminal
    spec["linux"]["cgroupsPath"] = cgroup or f"/flotilla-test/{uuid.uuid4().hex[:12]}"
    return json.dumps(spec).encode()


def process_spec(args: list[str], terminal: bool = False) -> bytes:
    proc = base_spec()["process"]
    proc["args"], proc["terminal"] = args, terminal
    return json.dumps(proc).encode()


@pytest.fixture(scope="session")
def rootfs() -> Iterator[Path]:
    with temporary_rootfs("flotilla-rootfs-") as path:
        yield path


@pytest.fixture(scope="session")
def shim_binary() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="flotilla-shim-"))
    yield supervisor.build(tmp / "flotilla-shim")
    shutil.rmtree(tmp, ignore_errors=True)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def __call__(self, ns: str, event: EventRecord) -> None:
        self.events.append((event.TOPIC, ns, to_wire(event)))

    def topics(self, id: str) -> list[str]:
        return [t for t, _, f in self.events if f.get("container_id") == id]


def fifo_paths(base: Path) -> tuple[str, str, str]:
    paths = tuple(str(base / f"{uuid.uuid4().hex[:6]}-{n}") for n in ("in", "out", "err"))
    for p in paths:
        os.mkfifo(p)
    return paths  # type: ignore[return-value]


@pytest.fixture(params=["runc", "crun"])
def oci_runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every engine test runs on both OCI runtimes (the default one, as a container naming none
    gets it)."""
    monkeypatch.setenv("FLOTILLA_OCI_RUNTIME", request.param)
    return str(request.param)


@pytest.fixture
async def engine(shim_binary: Path, oci_runtime: str) -> AsyncIterator[tuple[Engine, Recorder]]:
    tmp = Path(tempfile.mkdtemp(prefix="flotilla-rt-"))
    rec = Recorder()
    eng = Engine(tmp / "state", rec, shim_binary)
    yield eng, rec
    # nothing may outlive the test: kill and delete whatever is left
    for (ns, id), task in list(eng.tasks.items()):
        try:
            await task.oci.kill(id, 9, all=True)
        except Exception:
            pass
        try:
            await asyncio.wait_for(task.init.exited.wait(), 10)
            await eng.delete(ns, id)
        except Exception:
            await task.oci.delete(id, force=True)
    await eng.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_cgroups_left() -> Iterator[None]:
    """Every test cgroup lives under /flotilla-test; after the run none may be left."""
    yield
    left = []
    for parent in Path("/sys/fs/cgroup").glob("*/flotilla-test"):
        children = [p for p in parent.iterdir() if p.is_dir()]
        left += children
        if not children:
            parent.rmdir()
    assert left == [], f"cgroups left behind: {left}"
