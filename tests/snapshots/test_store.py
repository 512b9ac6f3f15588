"""The snapshot store without NATS: containerd's rules, namespaces, real overlay mounts of
deep chains, orphan cleanup."""

from __future__ import annotations

import os
import threading
import subprocess
from pathlib import Path
from collections.abc import Iterator

import pytest

from flotilla.libs import mount as mnt
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flotilla.services.snapshots.api import Info
from flotilla.services.snapshots.store import SnapshotStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SnapshotStore]:
    s = SnapshotStore.open(tmp_path / "snapshots")
    yield s
    s.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    t = tmp_path / "mnt"
    t.mkdir()
    yield t
    mnt.unmount_all(str(t))


def _fs(store: SnapshotStore, sn: str, ns: str, key: str) -> Path:
    m = store.mounts(ns, sn, key)[0]
    if m.type == "bind":
        return Path(m.source)
    return Path(next(o for o in m.options if o.startswith("upperdir="))[len("upperdir="):])


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_rules_and_messages(store: SnapshotStore, sn: str) -> None:
    store.prepare("a", sn, "k1")
    with pytest.raises(AlreadyExists, match='snapshot "k1": already exists'):
        store.prepare("a", sn, "k1")
    with pytest.raises(NotFound, match="parent snapshot nope does not exist: not found"):
        store.prepare("a", sn, "k2", "nope")
    with pytest.raises(InvalidArgument):
        store.prepare("a", sn, "k2", "k1")  # parent not committed
    store.commit("a", sn, "c1", "k1", labels={"x": "y"})
    with pytest.raises(NotFound):
        store.stat("a", sn, "k1")
    info = store.stat("a", sn, "c1")
    assert (info.kind, info.name, info.labels) == ("committed", "c1", {"x": "y"})
    with pytest.raises(FailedPrecondition):
        store.mounts("a", sn, "c1")
    store.prepare("a", sn, "k2", "c1")
    with pytest.raises(FailedPrecondition, match="cannot remove snapshot with child: failed precondition"):
        store.remove("a", sn, "c1")
    with pytest.raises(AlreadyExists):
        store.commit("a", sn, "c1", "k2")
    assert store.stat("a", sn, "k2").parent == "c1"
    # same key in another namespace is another snapshot
    store.prepare("b", sn, "k2")
    assert store.stat("b", sn, "k2").parent == ""
    assert [i.name for i in store.list("a", sn)] == ["c1", "k2"]
    assert [i.name for i in store.list("a", sn, ["kind==active"])] == ["k2"]
    assert [i.name for i in store.list("a", sn, ["labels.x==y"])] == ["c1"]
    assert store.namespace_held("a") == [sn] and store.namespace_held("zzz") == []
    store.remove("a", sn, "k2")
    store.remove("a", sn, "c1")
    store.remove("b", sn, "k2")
    with pytest.raises(NotFound, match="snapshot c1 does not exist: not found"):
        store.remove("a", sn, "c1")
    store.wait_purged()  # directories leave their place at once, the disk just after
    assert os.listdir(store.root / sn) == []


def test_update_labels_and_paths(store: SnapshotStore) -> None:
    store.prepare("a", "overlayfs", "k", labels={"a": "1", "b": "2"})
    info = store.update("a", "overlayfs", Info(kind="", name="k", labels={"a": "9", "c": "3"}), ["labels.a"])
    assert info.labels == {"a": "9", "b": "2"}
    info = store.update("a", "overlayfs", Info(kind="", name="k", labels={"z": "1"}))
    assert info.labels == {"z": "1"}
    with pytest.raises(InvalidArgument, match='cannot update "kind" field on snapshot "k"'):
        store.update("a", "overlayfs", Info(kind="", name="k"), ["kind"])
    with pytest.raises(InvalidArgument):
        store.prepare("a", "nosuch", "x")


def test_leases_recorded(store: SnapshotStore) -> None:
    store.prepare("a", "overlayfs", "k", lease="L1")
    assert store.stat("a", "overlayfs", "k").leases == ["L1"]
    store.commit("a", "overlayfs", "c", "k", lease="L2")
    assert store.list("a", "overlayfs")[0].leases == ["L2"]


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_layers_mount_as_a_tree(store: SnapshotStore, target: Path, sn: str) -> None:
    store.prepare("a", sn, "l1")
    (_fs(store, sn, "a", "l1") / "one").write_text("1")
    store.commit("a", sn, "c1", "l1")
    store.prepare("a", sn, "l2", "c1")
    (_fs(store, sn, "a", "l2") / "two").write_text("2")
    store.commit("a", sn, "c2", "l2")
    store.prepare("a", sn, "top", "c2")
    mnt.mount_all(store.mounts("a", sn, "top"), str(target))
    try:
        assert sorted(os.listdir(target)) == ["one", "two"]
        (target / "three").write_text("3")
    finally:
        mnt.unmount(str(target))
    store.view("a", sn, "v", "c2")
    mnt.mount_all(store.mounts("a", sn, "v"), str(target))
    try:
        assert sorted(os.listdir(target)) == ["one", "two"]
        with pytest.raises(OSError):
            (target / "nope").write_text("x")
    finally:
        mnt.unmount(str(target))
    assert store.usage("a", sn, "top").inodes >= 2
    assert store.usage("a", sn, "c1").inodes >= 2


def test_chain_of_150_layers_mounts(store: SnapshotStore, target: Path) -> None:
    parent = ""
    for i in range(150):
        store.prepare("deep", "overlayfs", f"a{i}", parent)
        (_fs(store, "overlayfs", "deep", f"a{i}") / f"f{i}").write_text(str(i))
        store.commit("deep", "overlayfs", f"c{i}", f"a{i}", )
        parent = f"c{i}"
    mounts = store.prepare("deep", "overlayfs", "top", parent)
    assert len(",".join(mounts[0].options)) > 4096  # more than a page: needs compaction
    mnt.mount_all(mounts, str(target))
    try:
        assert len(os.listdir(target)) == 150
        assert (target / "f0").read_text() == "0" and (target / "f149").read_text() == "149"
    finally:
        mnt.unmount(str(target))


def test_cleanup_reclaims_orphans(store: SnapshotStore) -> None:
    store.prepare("a", "overlayfs", "k")
    base = store.root / "overlayfs"
    (base / "999").mkdir()
    (base / "tmp-deadbeef").mkdir()
    removed = store.cleanup("overlayfs")
    assert sorted(removed) == ["999", "tmp-deadbeef"]
    assert len(os.listdir(base)) == 1
    store.stat("a", "overlayfs", "k")


def test_a_removed_snapshot_leaves_its_place_at_once_and_the_disk_after(store: SnapshotStore) -> None:
    """Remove answers once the record and the directory's place are gone; the files go on
    the purge thread, and Cleanup waits for them (what it returns, the disk has back)."""
    store.prepare("a", "overlayfs", "k")
    base = store.root / "overlayfs"
    (place,) = os.listdir(base)
    (base / place / "fs" / "file").write_bytes(b"x" * 4096)
    gate = threading.Event()
    store._purger.run(gate.wait)  # hold the purge thread: the removal queues behind
    store.remove("a", "overlayfs", "k")
    assert not (base / place).exists()
    assert [d for d in os.listdir(base) if d != place]  # its files, not yet purged
    with pytest.raises(NotFound):
        store.stat("a", "overlayfs", "k")
    cleaning = threading.Thread(target=store.cleanup, args=("overlayfs",))
    cleaning.start()
    cleaning.join(0.2)
    assert cleaning.is_alive()  # Cleanup waits for the removal under way
    gate.set()
    cleaning.join(10)
    assert os.listdir(base) == []


def test_compaction_keeps_mounting_semantics() -> None:
    opts = ["index=off", "workdir=/r/s/9/work", "upperdir=/r/s/9/fs", "lowerdir=/r/s/12/fs:/r/s/1/fs:/r/s/13/fs"]
    common, out = mnt.compact_lowerdirs(opts)
    assert common == "/r/s"
    assert out[-1] == "lowerdir=12/fs:1/fs:13/fs" and out[:3] == opts[:3]


def test_commit_stacks_a_parentless_overlay_snapshot(store: SnapshotStore, target: Path) -> None:
    # a parallel unpack: the upper layer is written apart, then stacked onto its parent
    store.prepare("a", "overlayfs", "l1")
    (_fs(store, "overlayfs", "a", "l1") / "one").write_text("1")
    store.commit("a", "overlayfs", "c1", "l1")
    store.prepare("a", "overlayfs", "l2")
    (_fs(store, "overlayfs", "a", "l2") / "two").write_text("2")
    os.mknod(_fs(store, "overlayfs", "a", "l2") / "one", 0o20000, os.makedev(0, 0))  # a whiteout
    store.commit("a", "overlayfs", "c2", "l2", parent="c1")
    assert store.stat("a", "overlayfs", "c2").parent == "c1"
    store.view("a", "overlayfs", "v", "c2")
    mnt.mount_all(store.mounts("a", "overlayfs", "v"), str(target))
    try:
        assert sorted(os.listdir(target)) == ["two"]
    finally:
        mnt.unmount(str(target))
    with pytest.raises(FailedPrecondition, match="has a parent already"):
        store.prepare("a", "overlayfs", "l3", "c2")
        store.commit("a", "overlayfs", "c3", "l3", parent="c1")
    with pytest.raises(NotFound, match="parent snapshot nope does not exist"):
        store.prepare("a", "overlayfs", "l4")
        store.commit("a", "overlayfs", "c4", "l4", parent="nope")
    with pytest.raises(InvalidArgument, match="is not committed snapshot"):
        store.commit("a", "overlayfs", "c4", "l4", parent="l3")
    with pytest.raises(InvalidArgument, match="cannot stack"):
        store.prepare("a", "native", "n1")
        store.commit("a", "native", "n2", "n1", parent="c1")
    # a parent whose root another owner holds: the stacked result could differ from an apply
    # onto it, so the caller is told to do that instead
    os.chown(store.snap_dir("overlayfs", _id(store, "c2")) / "fs", 1000, 1000)
    store.prepare("a", "overlayfs", "l5")
    with pytest.raises(FailedPrecondition, match="owned by 1000:1000"):
        store.commit("a", "overlayfs", "c5", "l5", parent="c2")
    assert store.stat("a", "overlayfs", "l5").kind == "active"


def _id(store: SnapshotStore, key: str) -> int:
    with store.reader.connect() as conn:
        return store._existing(conn, "a", "overlayfs", key).id
