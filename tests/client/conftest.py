"""Fixtures for the client tests: a real registry holding the offline images, and each test run
against both servers (containerd, the reference, and Flotilla's suite) in a namespace of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from flotilla.client import Client
from flotilla.libs.errors import FlotillaError
from flotilla.testing import ContainerdPeer, PrivateSuite, Registry
from flotilla.testing.images import busybox_image, multilayer_image, multiplatform_image, push


@dataclass
class Images:
    host: str

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    with Registry() as r:
        yield r


@pytest.fixture(scope="session")
def images(registry: Registry) -> Images:
    push(registry.host, "busybox", "latest", busybox_image())
    push(registry.host, "multilayer", "latest", multilayer_image())
    push(registry.host, "multiarch", "latest", multiplatform_image())
    return Images(registry.host)


@pytest.fixture(scope="session")
def registry_host(registry: Registry) -> str:
    return registry.host


@pytest.fixture(params=["containerd", "flotilla"])
def address(request: pytest.FixtureRequest) -> str:
    if request.param == "containerd":
        peer: ContainerdPeer = request.getfixturevalue("containerd")
        return peer.address
    suite: PrivateSuite = request.getfixturevalue("suite")
    return suite.address


async def cleanup(c: Client) -> None:
    """Remove everything a test left in its namespace, then the namespace itself."""
    for t in await c.tasks.list():
        try:
            await c.tasks.kill(t.container_id, "SIGKILL", all=True)
        except FlotillaError:
            pass
        try:
            await c.tasks.wait(t.container_id)
            await c.tasks.delete(t.container_id)
        except FlotillaError:
            pass
    for ctr in await c.containers.list():
        try:
            await c.delete_container(ctr.id)
        except FlotillaError:
            pass
    for img in await c.images.list():
        await c.images.delete(img.name, sync=True)
    for lease in await c.leases.list():
        await c.leases.delete(lease.id, sync=True)
    snaps = c.snapshots
    for _ in range(10):  # children before parents
        left = await snaps.list()
        if not left:
            break
        parents = {s.parent for s in left}
        for s in left:
            if s.name not in parents:
                try:
                    await snaps.remove(s.name)
                except FlotillaError:
                    pass
    for st in await c.content.statuses():
        try:
            await c.content.abort(st.ref)
        except FlotillaError:
            pass
    for info in await c.content.list():
        try:
            await c.content.delete(info.digest)
        except FlotillaError:
            pass
    try:
        await c.namespaces.delete(c.namespace)
    except FlotillaError:
        pass
    remove_namespace_cgroups(c.namespace)


def remove_namespace_cgroups(namespace: str) -> None:
    """The runtime removes a container's cgroup (/<namespace>/<id>) but, like containerd's,
    leaves the namespace's parent directory: remove it once it is empty."""
    import glob
    import os
    for path in glob.glob(f"/sys/fs/cgroup/{namespace}") + glob.glob(f"/sys/fs/cgroup/*/{namespace}"):
        try:
            os.rmdir(path)
        except OSError:
            pass  # not empty (still in use) or already gone


@pytest.fixture
async def client(address: str) -> AsyncIterator[Client]:
    c = Client(address, "t-" + uuid.uuid4().hex[:10])
    try:
        yield c
    finally:
        await cleanup(c)
        await c.close()


@pytest.fixture
async def ns(address: str) -> AsyncIterator[str]:
    """A namespace name for a test that drives the server by other means (CLI, ctr); cleaned after."""
    name = "cli-" + uuid.uuid4().hex[:8]
    yield name
    async with Client(address, name) as c:
        await cleanup(c)
