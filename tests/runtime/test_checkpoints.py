"""Checkpoints into the content store and restores from it (services/runtime/checkpoints.py),
with a real content service on a real nats-server and real tasks on runc.

CRIU cannot dump on this machine, so where a checkpoint must succeed a directory of made-up
image files stands in for CRIU's output (the OCI runtime's ``checkpoint`` is replaced by one
that writes them); everything after it (tar, content store, lease, restore's fetch and unpack)
is real. The refusal of the real CRIU is tested too, and side by side with containerd in
tests/integration/test_checkpoint.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.runtime import CHECKPOINT_CONFIG, CHECKPOINT_TAR, Descriptor
from flotilla.libs.bus import Bus
from flotilla.libs.errors import Unknown
from flotilla.services.runtime import checkpoints
from flotilla.services.runtime.checkpoints import Checkpoints, pack, unpack
from flotilla.services.runtime.engine import Engine
from flotilla.services.runtime.oci import OciRuntime
from tests.content.conftest import ContentProcs

from .conftest import Recorder, make_spec

NS = "ck-test"
IMAGES = {"inventory.img": b"inv" * 100, "pages-1.img": os.urandom(300_000), "descriptors.json": b"[]",
          "sub/core-1.img": b"core"}


@pytest.fixture
def content_service(nats_url: str) -> Iterator[ContentProcs]:
    procs = ContentProcs(nats_url)
    try:
        procs.start()
        yield procs
    finally:
        procs.stop()


@pytest.fixture(params=[True, False], ids=["local", "over-nats"])
def store(request: pytest.FixtureRequest, bus: Bus, content_service: ContentProcs,
          tmp_path: Path) -> Checkpoints:
    """On the content service's host (its files read and written directly) and as from another."""
    return Checkpoints(ContentClient(bus, content_service.prefix, local=request.param), tmp_path / "scratch")


def _fake_criu(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The OCI runtime's checkpoint writes IMAGES where CRIU would; the paths it was given."""
    given: list[Path] = []

    async def checkpoint(self: OciRuntime, id: str, image: Path, work: Path, leave_running: bool) -> None:
        given.append(image)
        for name, data in IMAGES.items():
            (image / name).parent.mkdir(parents=True, exist_ok=True)
            (image / name).write_bytes(data)
        os.symlink("pages-1.img", image / "link")
    monkeypatch.setattr(OciRuntime, "checkpoint", checkpoint)
    return given


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


async def _running_task(eng: Engine, rootfs: Path) -> str:
    id = "ck-" + uuid.uuid4().hex[:10]
    await eng.create(NS, id, make_spec(str(rootfs), ["sleep", "1000"]))
    await eng.start(NS, id)
    return id


def test_pack_writes_containerd_layout_and_unpacks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name, data in IMAGES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    os.symlink("pages-1.img", src / "link")
    blob = tmp_path / "blob.tar"
    with socket.socket(socket.AF_UNIX) as s:  # containerd leaves sockets out
        s.bind(str(src / "sock"))
        pack(src, os.open(blob, os.O_WRONLY | os.O_CREAT))
    data = blob.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    # Go's walk order, relative names, directories with a slash, no owner names, whole seconds
    assert [m.name for m in members] == ["descriptors.json", "inventory.img", "link", "pages-1.img", "sub",
                                         "sub/core-1.img"]
    assert b"sub/\0" in data  # (tarfile reads the name without its slash)
    assert all(m.uname == "" and m.gname == "" and m.mtime == int(m.mtime) for m in members)
    assert members[2].issym() and members[2].linkname == "pages-1.img"
    unpack(str(blob), tmp_path / "out")
    assert _files(tmp_path / "out") == IMAGES
    assert os.readlink(tmp_path / "out" / "link") == "pages-1.img"


def test_unpack_refuses_what_is_no_checkpoint(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(Unknown, match="archive/tar: invalid tar header"):
        unpack(str(blob), tmp_path / "out")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        tar.addfile(info, io.BytesIO(b""))
    blob.write_bytes(buf.getvalue())
    with pytest.raises(Unknown, match="failed to extract checkpoint"):
        unpack(str(blob), tmp_path / "out")
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("oci_runtime", ["runc"], indirect=True)
async def test_checkpoint_into_content_store_and_restore_dir(engine: tuple[Engine, Recorder], rootfs: Path,
                                                             store: Checkpoints,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    eng, _ = engine
    given = _fake_criu(monkeypatch)
    id = await _running_task(eng, rootfs)
    config = b"\n\x05spec!"
    descs = await store.checkpoint(eng, NS, id, lease="ck-lease", config=config)
    # a temporary directory named as containerd names it, gone afterwards
    assert given[0].parent == store.scratch and given[0].name.startswith("ctd-checkpoint")
    assert list(store.scratch.iterdir()) == []
    tar_d, config_d = descs
    assert (tar_d.media_type, config_d.media_type) == (CHECKPOINT_TAR, CHECKPOINT_CONFIG)
    assert config_d == Descriptor(CHECKPOINT_CONFIG, "sha256:" + hashlib.sha256(config).hexdigest(), len(config))
    content = store.content
    for d in descs:
        info = await content.info(NS, d.digest)
        assert info.size == d.size and info.leases == ["ck-lease"]  # held until the client references them
    tar_bytes = await content.read_all(NS, tar_d.digest)
    assert tar_d.digest == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    assert await content.read_all(NS, config_d.digest) == config
    assert await content.list_statuses(NS) == []
    assert eng.get(NS, id).status == "running"  # left running (no exit asked)
    images = await store.unpacked(NS, tar_d)
    assert images.name.startswith("ctrd-checkpoint") and images.parent == store.scratch
    assert _files(images) == IMAGES and os.readlink(images / "link") == "pages-1.img"
    assert list(store.scratch.iterdir()) == [images]  # (a fetched copy of the tar is gone)
    await store.discard(images)
    assert list(store.scratch.iterdir()) == []


@pytest.mark.parametrize("oci_runtime", ["runc"], indirect=True)
async def test_failed_checkpoint_leaves_nothing(engine: tuple[Engine, Recorder], rootfs: Path, store: Checkpoints,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The real CRIU (which cannot dump here), then a tar that breaks off half-way: neither
    leaves a temporary directory, an ingest or a blob."""
    eng, _ = engine
    id = await _running_task(eng, rootfs)
    try:
        await store.checkpoint(eng, NS, id, lease="ck-lease")
    except Unknown as exc:  # where CRIU works, the next case still fails
        assert "criu" in exc.message.lower() and "dump.log" in exc.message
    assert list(store.scratch.iterdir()) == []
    for d in await store.content.list(NS):
        await store.content.delete(NS, d.digest)

    _fake_criu(monkeypatch)

    def broken_pack(directory: Path, out: int) -> None:
        os.write(out, b"\0" * 700_000)  # some bytes reach the ingest first
        os.close(out)
        raise OSError("disk on fire")
    monkeypatch.setattr(checkpoints, "pack", broken_pack)
    with pytest.raises(OSError, match="disk on fire"):
        await store.checkpoint(eng, NS, id, lease="ck-lease")
    assert list(store.scratch.iterdir()) == []
    assert await store.content.list_statuses(NS) == []
    assert await store.content.list(NS) == []
    assert eng.get(NS, id).status == "running"


async def test_restore_of_a_missing_or_broken_blob_leaves_nothing(store: Checkpoints) -> None:
    missing = Descriptor(CHECKPOINT_TAR, "sha256:" + "a" * 64, 3)
    with pytest.raises(Unknown, match=f"content digest {missing.digest}: not found"):
        await store.unpacked(NS, missing)
    data = b"not a tar at all" * 100
    digest = await store.content.write_blob(NS, "not-a-tar", data)
    with pytest.raises(Unknown, match="archive/tar: invalid tar header"):
        await store.unpacked(NS, Descriptor(CHECKPOINT_TAR, digest, len(data)))
    assert list(store.scratch.iterdir()) == []
    await store.content.delete(NS, digest)


@pytest.mark.parametrize("oci_runtime", ["runc"], indirect=True)
async def test_restore_runs_at_start(engine: tuple[Engine, Recorder], rootfs: Path, tmp_path: Path) -> None:
    """A task created from CRIU images is CREATED with no process; its start runs the runtime's
    restore (here refused: the images are made up) and may be deleted after, as containerd's."""
    eng, rec = engine
    images = tmp_path / "images"
    images.mkdir()
    (images / "inventory.img").write_bytes(b"not really CRIU's")
    id = "ck-" + uuid.uuid4().hex[:10]
    info = await eng.create(NS, id, make_spec(str(rootfs), ["sleep", "1000"]), checkpoint=str(images))
    assert (info.status, info.pid) == ("created", 0)
    with pytest.raises(Unknown, match="OCI runtime restore failed: "):
        await eng.start(NS, id)
    assert eng.get(NS, id).status == "created"
    exit_ = await eng.delete(NS, id)
    assert exit_.exit_status == 0
    assert rec.topics(id) == ["/tasks/create", "/tasks/delete"]
