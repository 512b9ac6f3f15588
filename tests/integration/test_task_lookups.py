"""The gateway's own answers on a task's way (records.py): the container a task's calls look
up comes from the containers it saw lately, and a task it deleted is not asked for again.
Each saving is counted on the suite's bus; each answer must stay what the runtime would say."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pbc
from flotilla._api.containerd.api.services.containers.v1 import containers_pb2_grpc as pbc_grpc
from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2 as pbt
from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2_grpc as pbt_grpc
from flotilla.libs.api.runtime import CreateTask, ProcessRef, RuntimeClient
from flotilla.libs.config import Config
from flotilla.libs.errors import NotFound
from flotilla.testing import PrivateSuite
from tests.integration.busspy import requests_seen
from tests.integration.test_runtime import _cleanup

MD = [("containerd-namespace", "default")]
pytestmark = pytest.mark.usefixtures("no_supervisor_left")


async def _count(suite: PrivateSuite, subjects: list[str], body: Callable[[], object]) -> dict[str, int]:
    """How many requests each of ``subjects`` (NATS wildcards) got while ``body`` ran."""
    return {subject: len(seen) for subject, seen in (await requests_seen(suite, subjects, body)).items()}


async def test_run_rm_asks_the_bus_for_its_container_and_deleted_task_no_more(
        suite: PrivateSuite, rootfs: Path) -> None:
    """ctr looks its container up three times and Tasks.Create a fourth; after its task's
    delete it asks for the task twice more (both NotFound): all answered by the gateway."""
    id = f"look-{uuid.uuid4().hex[:8]}"
    seen = await _count(suite, ["metadata.containers.get", "runtime.*.tasks.get"], lambda: suite.ctr(
        "run", "--rm", "--rootfs", str(rootfs), id, "/bin/true", check=True))
    assert seen == {"metadata.containers.get": 0, "runtime.*.tasks.get": 1}, seen  # the one before the delete
    res = suite.ctr("task", "ls")
    assert id not in res.stdout
    # a Get of the deleted task answers as the runtime would: its container is gone too
    with grpc.insecure_channel(f"unix://{suite.address}") as ch:
        try:
            pbt_grpc.TasksStub(ch).Get(pbt.GetRequest(container_id=id), metadata=MD)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            assert exc.details() == f'container "{id}" in namespace "default": not found', exc.details()
        else:
            raise AssertionError("a deleted task was found")


def test_a_task_created_again_after_its_delete_is_found(suite: PrivateSuite, rootfs: Path) -> None:
    id = f"again-{uuid.uuid4().hex[:8]}"
    suite.ctr("run", "--rm", "--rootfs", str(rootfs), id, "/bin/true", check=True)
    try:
        suite.ctr("run", "-d", "--rootfs", str(rootfs), id, "/bin/sleep", "1000", check=True)
        rows = [line.split() for line in suite.ctr("task", "ls", check=True).stdout.splitlines()[1:]]
        assert [id, "RUNNING"] in [[r[0], r[2]] for r in rows], rows
        with grpc.insecure_channel(f"unix://{suite.address}") as ch:
            got = pbt_grpc.TasksStub(ch).Get(pbt.GetRequest(container_id=id), metadata=MD)
        assert got.process.status == 2  # RUNNING
    finally:
        _cleanup(suite.address, id)


async def test_a_task_created_elsewhere_after_its_delete_here_is_found(
        suite: PrivateSuite, rootfs: Path) -> None:
    """Another gateway (here a bus client) creates the task this one just deleted: its event
    drops the mark at once, not after the mark's two seconds."""
    id = f"else-{uuid.uuid4().hex[:8]}"
    suite.ctr("container", "create", "--rootfs", str(rootfs), id, "/bin/sleep", "1000", check=True)
    bus = await suite.bus("elsewhere")
    try:
        with grpc.insecure_channel(f"unix://{suite.address}") as ch:
            spec = pbc_grpc.ContainersStub(ch).Get(pbc.GetContainerRequest(id=id), metadata=MD).container.spec.value
            tasks = pbt_grpc.TasksStub(ch)
            tasks.Create(pbt.CreateTaskRequest(container_id=id), metadata=MD)
            tasks.Delete(pbt.DeleteTaskRequest(container_id=id), metadata=MD)
            runtime = RuntimeClient(bus, suite.suite.prefix, Config().host)
            made = time.monotonic()
            await runtime.create(CreateTask(namespace="default", id=id, spec=spec))
            status = None
            while status is None and time.monotonic() - made < 1.0:
                try:
                    status = tasks.Get(pbt.GetRequest(container_id=id), metadata=MD).process.status
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                    await asyncio.sleep(0.02)
            assert status == 1, status  # CREATED, seen well within the mark's two seconds
    finally:
        try:  # through the bus: the gateway's answers are what is under test
            await RuntimeClient(bus, suite.suite.prefix, Config().host).delete(ProcessRef("default", id))
        except NotFound:
            pass
        await bus.close()
        _cleanup(suite.address, id)
