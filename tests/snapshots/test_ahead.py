"""Layers applied ahead of their Diff.Apply (services/snapshots/ahead.py), through the Differ
and its worker processes: moved into place only where that is what applying gives, gone when
never asked for. (The whole path, with ctr and containerd beside it:
tests/integration/test_apply_ahead.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flotilla.libs.api.snapshots import Descriptor, Mount
from flotilla.services.snapshots.ahead import AheadLayers
from flotilla.services.snapshots.diffs import LAYER_GZIP, Differ
from tests.snapshots.layers import Entry, gz, tar_bytes, tree

PLAIN = [Entry("etc", "dir", mode=0o755), Entry("etc/conf", data=b"c" * 5000, mode=0o600, uid=7),
         Entry("bin", "dir"), Entry("bin/sh", data=b"#!", mode=0o755), Entry("bin/link", "hardlink", link="bin/sh"),
         Entry("bin/sym", "symlink", link="sh")]
WHITEOUTS = [Entry(".wh.gone"), Entry("o", "dir"), Entry("o/.wh..wh..opq"), Entry("o/new", data=b"n")]
NEEDS_PARENT = [Entry("x", "hardlink", link="lower/file")]


class _Blobs:
    """The content store's local paths of the test's blobs (what the Differ asks of it)."""
    local = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.root / digest[7:]).write_bytes(data)
        return digest

    async def local_path(self, namespace: str, digest: str) -> str:
        return str(self.root / digest[7:])


@pytest.fixture
async def differ(tmp_path: Path) -> AsyncIterator[tuple[Differ, _Blobs]]:
    (tmp_path / "blobs").mkdir()
    blobs = _Blobs(tmp_path / "blobs")
    ahead = AheadLayers(tmp_path / "snapshots" / ".ahead", ttl=30, limit=2)
    ahead.clear()
    d = Differ(blobs, tmp_path / "scratch", workers=1, ahead=ahead)  # type: ignore[arg-type]
    try:
        yield d, blobs
    finally:
        d.close()


async def _ahead_done(d: Differ, digest: str) -> None:
    assert d.ahead is not None
    for _ in range(500):
        layer = d.ahead._layers.get(("ns", digest))
        if layer is None or layer.done.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not applied ahead in 5 s")


def _tree(root: Path) -> dict[str, tuple]:  # type: ignore[type-arg]
    """The tree but the whiteouts' times: a whiteout is made when it is applied."""
    return {k: v[:6] + ((None,) if stat.S_ISCHR(v[0]) else v[6:]) for k, v in tree(root).items()}


def _target(tmp_path: Path, name: str) -> Path:
    p = tmp_path / "snapshots" / name
    p.mkdir(parents=True)
    return p


async def test_a_layer_applied_ahead_is_moved_into_place_as_applying_it_gives(
        differ: tuple[Differ, _Blobs], tmp_path: Path) -> None:
    d, blobs = differ
    for name, entries in (("plain", PLAIN), ("whiteouts", WHITEOUTS)):
        digest = blobs.put(gz(tar_bytes(entries)))
        desc = Descriptor(media_type=LAYER_GZIP, digest=digest, size=0)
        d.apply_ahead("ns", digest)
        await _ahead_done(d, digest)
        upper, work, applied = (_target(tmp_path, f"{name}-{k}") for k in ("upper", "work", "applied"))
        overlay = Mount(type="overlay", source="overlay",
                        options=[f"upperdir={upper}", f"workdir={work}", f"lowerdir={tmp_path / 'blobs'}"])
        taken = await d.apply("ns", desc, [overlay])
        again = await d.apply("ns", desc, [Mount(type="overlay", source="overlay", options=[
            f"upperdir={applied}", f"workdir={work}", f"lowerdir={tmp_path / 'blobs'}"])])  # not ahead: applied
        assert taken == again and _tree(upper) == _tree(applied), name
        if name == "whiteouts":
            assert os.getxattr(upper / "o", "trusted.overlay.opaque") == b"y"
    assert d.ahead is not None and d.ahead.taken == 2
    assert list((tmp_path / "snapshots" / ".ahead").iterdir()) == []


async def test_what_applying_would_not_give_is_applied_as_usual(differ: tuple[Differ, _Blobs], tmp_path: Path) -> None:
    d, blobs = differ
    assert d.ahead is not None
    # whiteouts onto a plain directory are deletions, not the overlay form applied ahead
    digest = blobs.put(gz(tar_bytes(WHITEOUTS)))
    d.apply_ahead("ns", digest)
    await _ahead_done(d, digest)
    plain = _target(tmp_path, "plain")
    await d.apply("ns", Descriptor(media_type=LAYER_GZIP, digest=digest, size=0), [Mount(type="bind", source=str(plain),
                                                                                         options=["rw", "rbind"])])
    assert sorted(os.listdir(plain)) == ["o"] and d.ahead.taken == 0
    # a layer that needs its parent's files is not applied ahead at all
    digest = blobs.put(gz(tar_bytes(NEEDS_PARENT)))
    d.apply_ahead("ns", digest)
    await _ahead_done(d, digest)
    assert ("ns", digest) not in d.ahead._layers
    # a target that holds something already, another namespace's apply: applied as usual
    digest = blobs.put(gz(tar_bytes(PLAIN)))
    d.apply_ahead("ns", digest)
    await _ahead_done(d, digest)
    busy = _target(tmp_path, "busy")
    (busy / "there").write_text("x")
    assert await d.ahead.take("other", digest, str(busy), plain=True) is None
    assert await d.ahead.take("ns", digest, str(busy), plain=True) is None
    assert d.ahead.taken == 0


async def test_layers_never_asked_for_go(differ: tuple[Differ, _Blobs], tmp_path: Path) -> None:
    d, blobs = differ
    assert d.ahead is not None
    room = tmp_path / "snapshots" / ".ahead"
    digests = [blobs.put(gz(tar_bytes([Entry(f"f{i}", data=b"x")]))) for i in range(3)]
    for digest in digests:  # a limit of 2: the first goes when the third comes
        d.apply_ahead("ns", digest)
        await _ahead_done(d, digest)
    assert sorted(k[1] for k in d.ahead._layers) == sorted(digests[1:])
    d.ahead.ttl = 0.2
    digest = blobs.put(gz(tar_bytes([Entry("f3", data=b"x")])))
    d.apply_ahead("ns", digest)
    await _ahead_done(d, digest)
    for _ in range(100):  # and this one once its 0.2 s are over (the others: their 30 s)
        if ("ns", digest) not in d.ahead._layers:
            break
        await asyncio.sleep(0.05)
    assert ("ns", digest) not in d.ahead._layers and len(list(room.iterdir())) == 1
    for layer in list(d.ahead._layers.values()):
        d.ahead._expire(layer)
    for _ in range(100):
        if not d.ahead._layers and not list(room.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert d.ahead._layers == {} and list(room.iterdir()) == []
