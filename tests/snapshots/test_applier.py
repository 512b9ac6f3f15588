"""The layer applier on real tar files: file kinds kept, whiteouts in both forms, and every
hostile layer refused or contained with the host untouched."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
from pathlib import Path

import pytest

from flotilla.services.snapshots.applier import LayerError, ParentNeeded, apply_layer, apply_tar

from .layers import Entry, gz, tar_bytes, tree, zst

OCI = "application/vnd.oci.image.layer.v1.tar"
GZIP_MEDIA = OCI + "+gzip"


def _apply(tmp: Path, entries: list[Entry], root: Path, overlay: bool = False, parents: list[str] | None = None) -> None:
    blob = tmp / f"layer-{len(list(tmp.iterdir()))}.tar"
    blob.write_bytes(tar_bytes(entries))
    apply_layer(str(blob), OCI, str(root), overlay, parents)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the root standing for the host: it must never change."""
    o = tmp_path / "host"
    o.mkdir()
    (o / "passwd").write_text("root:x:0:0\n")
    return o


def test_kinds_owners_modes_times_xattrs_kept(tmp_path: Path, root: Path) -> None:
    entries = [
        Entry("etc", "dir", mode=0o755, mtime=1_500_000_000),
        Entry("etc/hosts", data=b"127.0.0.1 localhost\n", mode=0o640, uid=12, gid=34, mtime=1_500_000_001,
              xattrs={"user.flotilla": "yes"}),
        # a hardlink's header sets the shared inode's metadata, as containerd's does
        Entry("etc/hosts.link", "hardlink", link="etc/hosts", mode=0o640, uid=12, gid=34, mtime=1_500_000_001),
        Entry("bin", "dir", mode=0o755),
        Entry("bin/sh", data=b"#!", mode=0o4755),
        Entry("bin/ash", "symlink", link="/bin/sh", mtime=1_400_000_000),
        Entry("dev", "dir"),
        Entry("dev/null", "char", mode=0o666, major=1, minor=3),
        Entry("dev/loop9", "block", mode=0o660, major=7, minor=9),
        Entry("run", "dir"),
        Entry("run/fifo", "fifo", mode=0o600),
    ]
    _apply(tmp_path, entries, root)
    t = tree(root)
    assert t["etc/hosts"][1:5] == (0o640, 12, 34, b"127.0.0.1 localhost\n")
    assert ("user.flotilla", b"yes") in t["etc/hosts"][5]
    assert t["etc/hosts"][6] == 1_500_000_001 * 10**9
    assert os.stat(root / "etc/hosts").st_ino == os.stat(root / "etc/hosts.link").st_ino
    assert t["bin/sh"][1] == 0o4755
    assert t["bin/ash"][0] == stat.S_IFLNK and t["bin/ash"][4] == "/bin/sh"
    assert t["bin/ash"][6] == 1_400_000_000 * 10**9
    assert t["dev/null"][0] == stat.S_IFCHR and t["dev/null"][4] == (1, 3)
    assert t["dev/loop9"][0] == stat.S_IFBLK and t["dev/loop9"][4] == (7, 9)
    assert t["run/fifo"][0] == stat.S_IFIFO
    assert os.stat(root / "etc").st_mtime_ns == 1_500_000_000 * 10**9


@pytest.mark.parametrize("compress,media", [
    (lambda d: d, "application/vnd.oci.image.layer.v1.tar"),
    (gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
    (zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
    (gz, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    (lambda d: d, "application/vnd.docker.image.rootfs.diff.tar"),
])
def test_media_types_and_uncompressed_digest(tmp_path: Path, root: Path, compress, media: str) -> None:  # type: ignore[no-untyped-def]
    raw = tar_bytes([Entry("a", data=b"hello")])
    blob = tmp_path / "blob"
    blob.write_bytes(compress(raw))
    want = "sha256:" + hashlib.sha256(raw).hexdigest()
    applied = apply_layer(str(blob), media, str(root), False, expected=want)
    assert applied.digest == want and applied.size == len(raw)
    assert (root / "a").read_bytes() == b"hello"


def test_wrong_uncompressed_digest_is_refused(tmp_path: Path, root: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tar_bytes([Entry("a", data=b"x")]))
    with pytest.raises(LayerError, match="wrong diff id"):
        apply_layer(str(blob), OCI, str(root), False, expected="sha256:" + "0" * 64)


def test_gzip_members_concatenated_corrupt_and_truncated(tmp_path: Path, root: Path) -> None:
    """Two gzip members make one stream (as Go's reader reads them); a corrupt or cut one
    is a LayerError, whichever inflater (ISA-L or zlib) runs."""
    raw = tar_bytes([Entry("a", data=b"hello" * 1000), Entry("b", data=os.urandom(50_000))])
    whole = gzip.compress(raw)
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(raw[:7000]) + gzip.compress(raw[7000:]))
    applied = apply_layer(str(blob), GZIP_MEDIA, str(root), False, expected="sha256:" + hashlib.sha256(raw).hexdigest())
    assert applied.size == len(raw) and (root / "a").read_bytes() == b"hello" * 1000
    for i, bad in enumerate((whole[:10] + bytes(64) + whole[74:], whole[: len(whole) // 2])):
        blob.write_bytes(bad)
        (tmp_path / f"bad{i}").mkdir()
        with pytest.raises(LayerError):
            apply_layer(str(blob), GZIP_MEDIA, str(tmp_path / f"bad{i}"), False)


def test_gzip_that_inflates_far_comes_out_whole_and_bounded(tmp_path: Path, root: Path) -> None:
    """A layer whose bytes inflate 1000-fold comes out whole, in bounded pieces, across
    concatenated members."""
    raw = tar_bytes([Entry("zeros", data=bytes(20 << 20)), Entry("after", data=b"tail")])
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(raw[: 6 << 20]) + gzip.compress(raw[6 << 20:]))
    applied = apply_layer(str(blob), GZIP_MEDIA, str(root), False, expected="sha256:" + hashlib.sha256(raw).hexdigest())
    assert applied.size == len(raw)
    assert (root / "zeros").stat().st_size == 20 << 20 and (root / "after").read_bytes() == b"tail"


def test_no_decompressing_thread_outlives_its_apply(tmp_path: Path, root: Path, outside: Path) -> None:
    """The applier's decompressing thread ends with the apply, also when the layer is refused
    halfway (the worker process lives on and applies the next layer)."""
    def decompressing() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "layer-decompress")
    before = decompressing()
    # refused at its first entry, with megabytes still to come: the thread is blocked
    # handing them over when the apply gives up
    hostile = [Entry("link", "hardlink", link=str(outside / "passwd")), Entry("big", data=os.urandom(4 << 20))]
    blob = tmp_path / "hostile"
    blob.write_bytes(gzip.compress(tar_bytes(hostile)))
    with pytest.raises(LayerError):
        apply_layer(str(blob), GZIP_MEDIA, str(root), False)
    good = tmp_path / "good"
    good.write_bytes(gzip.compress(tar_bytes([Entry("a", data=b"x")])))
    apply_layer(str(good), GZIP_MEDIA, str(tmp_path / "root"), False)
    assert decompressing() == before


def test_unknown_media_type_refused(tmp_path: Path, root: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tar_bytes([Entry("a")]))
    with pytest.raises(LayerError, match="no processor"):
        apply_layer(str(blob), "application/x-bogus", str(root), False)


def test_plain_whiteouts_delete_and_opaque_clears_lower(tmp_path: Path, root: Path) -> None:
    _apply(tmp_path, [Entry("d", "dir"), Entry("d/old", data=b"1"), Entry("d/sub", "dir"),
                      Entry("d/sub/x", data=b"x"), Entry("gone", data=b"g"), Entry("o", "dir"),
                      Entry("o/lower", data=b"l")], root)
    _apply(tmp_path, [Entry(".wh.gone"), Entry("d/.wh.old"), Entry("o", "dir"), Entry("o/.wh..wh..opq"),
                      Entry("o/new", data=b"n")], root)
    assert sorted(tree(root)) == ["d", "d/sub", "d/sub/x", "o", "o/new"]


def test_overlay_whiteouts_are_char_devices_and_opaque_xattr(tmp_path: Path, root: Path) -> None:
    _apply(tmp_path, [Entry(".wh.gone"), Entry("o", "dir"), Entry("o/.wh..wh..opq"), Entry("o/new", data=b"n")],
           root, overlay=True)
    st = os.lstat(root / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(root / "o", "trusted.overlay.opaque") == b"y"
    assert (root / "o/new").read_bytes() == b"n"


def test_detached_apply_writes_overlay_form_and_refuses_what_needs_the_parent(tmp_path: Path, root: Path) -> None:
    # a parallel unpack's layer, applied before the layers below it are there
    blob = tmp_path / "detached.tar"
    blob.write_bytes(tar_bytes([Entry(".wh.gone"), Entry("o", "dir"), Entry("o/.wh..wh..opq"),
                                Entry("o/new", data=b"n"), Entry("o/link", "hardlink", link="o/new")]))
    apply_layer(str(blob), OCI, str(root), False, detached=True)
    assert stat.S_ISCHR(os.lstat(root / "gone").st_mode)
    assert os.getxattr(root / "o", "trusted.overlay.opaque") == b"y"
    assert os.stat(root / "o/link").st_ino == os.stat(root / "o/new").st_ino
    for name, entries in [("hardlink", [Entry("x", "hardlink", link="lower/file")]),
                          ("unlisted dir", [Entry("d", "dir"), Entry("d/e/f", data=b"f")])]:
        target = tmp_path / name
        target.mkdir()
        blob.write_bytes(tar_bytes(entries))
        with pytest.raises(ParentNeeded):
            apply_layer(str(blob), OCI, str(target), True, [str(root)], detached=True)


def test_replacing_kinds(tmp_path: Path, root: Path) -> None:
    _apply(tmp_path, [Entry("a", "dir"), Entry("a/x", data=b"x"), Entry("b", data=b"b")], root)
    _apply(tmp_path, [Entry("a", data=b"now a file"), Entry("b", "dir"), Entry("b/y", data=b"y")], root)
    assert (root / "a").read_bytes() == b"now a file"
    assert (root / "b/y").read_bytes() == b"y"


# -- hostile layers --------------------------------------------------------------------

def _host_untouched(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["passwd"]
    assert (outside / "passwd").read_text() == "root:x:0:0\n"


def test_dotdot_entries_stay_inside(tmp_path: Path, root: Path, outside: Path) -> None:
    _apply(tmp_path, [Entry("../host/passwd", data=b"pwned"), Entry("a/../../../host/evil", data=b"x"),
                      Entry("../../../../../../../tmp/evil-" + root.name, data=b"x")], root)
    _host_untouched(outside)
    assert (root / "host/passwd").read_bytes() == b"pwned"
    assert not Path("/tmp/evil-" + root.name).exists()


def test_absolute_names_stay_inside(tmp_path: Path, root: Path, outside: Path) -> None:
    _apply(tmp_path, [Entry(str(outside / "passwd"), data=b"pwned"), Entry(str(outside / "new"), data=b"x")], root)
    _host_untouched(outside)
    assert (root / str(outside).lstrip("/") / "passwd").read_bytes() == b"pwned"


def test_symlink_out_of_root_then_written_through(tmp_path: Path, root: Path, outside: Path) -> None:
    _apply(tmp_path, [
        Entry("abs", "symlink", link=str(outside)),
        Entry("abs/passwd", data=b"pwned"),
        Entry("rel", "symlink", link="../../../../../../" + str(outside).lstrip("/")),
        Entry("rel/new", data=b"x"),
        Entry("deep", "dir"), Entry("deep/up", "symlink", link="../.."),
        Entry("deep/up/host/passwd", data=b"pwned"),
    ], root)
    _host_untouched(outside)
    # the writes went where the symlinks point *inside* the root
    assert (root / str(outside).lstrip("/") / "passwd").read_bytes() == b"pwned"
    assert (root / "host/passwd").read_bytes() == b"pwned"


def test_symlink_as_final_component_is_replaced_not_followed(tmp_path: Path, root: Path, outside: Path) -> None:
    _apply(tmp_path, [Entry("p", "symlink", link=str(outside / "passwd")), Entry("p", data=b"pwned", mode=0o777)], root)
    _host_untouched(outside)
    assert (root / "p").read_bytes() == b"pwned"
    assert stat.S_IMODE(os.stat(outside / "passwd").st_mode) != 0o777


def test_hardlink_to_outside_file_refused(tmp_path: Path, root: Path, outside: Path) -> None:
    for link in (str(outside / "passwd"), "../host/passwd", "../../../../../.." + str(outside / "passwd")):
        with pytest.raises(LayerError):
            _apply(tmp_path, [Entry("x", "hardlink", link=link)], root)
    # a hardlink through a symlink pointing out resolves inside, where there is nothing
    with pytest.raises(LayerError):
        _apply(tmp_path, [Entry("s", "symlink", link=str(outside)), Entry("y", "hardlink", link="s/passwd")], root)
    _host_untouched(outside)
    assert os.stat(outside / "passwd").st_nlink == 1


def test_hardlink_to_symlink_links_the_symlink(tmp_path: Path, root: Path, outside: Path) -> None:
    _apply(tmp_path, [Entry("s", "symlink", link=str(outside / "passwd")), Entry("h", "hardlink", link="s")], root)
    assert os.path.islink(root / "h")
    assert os.stat(outside / "passwd").st_nlink == 1
    _host_untouched(outside)


def test_whiteout_cannot_delete_outside(tmp_path: Path, root: Path, outside: Path) -> None:
    _apply(tmp_path, [Entry("s", "symlink", link=str(outside)), Entry("s/.wh.passwd"),
                      Entry("../host/.wh.passwd"), Entry("t", "symlink", link=str(outside)),
                      Entry("t/.wh..wh..opq")], root)
    _host_untouched(outside)


def test_truncated_huge_entry_fails_cleanly(tmp_path: Path, root: Path, outside: Path) -> None:
    # claim 8 GiB of data in the header (octal size field) without supplying it
    info = tarfile.TarInfo("big")
    info.size = 8 << 30
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    blob = tmp_path / "huge.tar"
    blob.write_bytes(header + b"x" * 4096)
    with pytest.raises(LayerError):
        apply_layer(str(blob), OCI, str(root), False)
    _host_untouched(outside)
    assert not (root / "big").exists() or (root / "big").stat().st_size <= 4096


def test_sparse_entry_stays_sparse(tmp_path: Path, root: Path) -> None:
    # a GNU sparse file: 1 GiB apparent size, 4 KiB of data at its end
    src = tmp_path / "sparse.src"
    with open(src, "wb") as f:
        f.truncate(1 << 30)
        f.seek((1 << 30) - 4096)
        f.write(b"z" * 4096)
    blob = tmp_path / "sparse.tar"
    import subprocess
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(blob), "-C", str(tmp_path), "sparse.src"], check=True)
    src.unlink()
    apply_layer(str(blob), OCI, str(root), False)
    st = os.stat(root / "sparse.src")
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 1 << 20
    with open(root / "sparse.src", "rb") as f:
        f.seek((1 << 30) - 4096)
        assert f.read() == b"z" * 4096


def test_malformed_tar_is_refused(tmp_path: Path, root: Path) -> None:
    blob = tmp_path / "junk"
    blob.write_bytes(b"\x00" * 100 + b"junk" * 200)
    with pytest.raises(LayerError):
        apply_layer(str(blob), OCI, str(root), False)


def test_apply_tar_stream(root: Path) -> None:
    apply_tar(io.BytesIO(tar_bytes([Entry("f", data=b"1")])), str(root), False)  # type: ignore[arg-type]
    assert (root / "f").read_bytes() == b"1"


def test_a_whiteout_of_a_name_the_layer_made_itself(tmp_path: Path, root: Path) -> None:
    # in an overlay upper, the removal closed the directory's descriptor the whiteout was
    # then made in (EBADF)
    _apply(tmp_path, [Entry("d", "dir"), Entry("d/a", data=b"a"), Entry("d/.wh.a"), Entry("d/b", data=b"b")],
           root, overlay=True)
    assert stat.S_ISCHR(os.lstat(root / "d" / "a").st_mode) and (root / "d" / "b").read_bytes() == b"b"


def test_owner_and_mode_as_the_header_says_whatever_the_file_was_made_with(tmp_path: Path, root: Path) -> None:
    os.chmod(root, 0o2775)  # a setgid directory gives new files its group
    os.chown(root, 0, 1234)
    old = os.umask(0o077)
    try:
        _apply(tmp_path, [Entry("plain", data=b"p", mode=0o644), Entry("setuid", data=b"s", mode=0o4755, uid=1000),
                          Entry("odd", data=b"o", mode=0o0460, gid=5)], root)
    finally:
        os.umask(old)
    got = {n: (stat.S_IMODE(os.lstat(root / n).st_mode) | (os.lstat(root / n).st_mode & 0o7000),
               os.lstat(root / n).st_uid, os.lstat(root / n).st_gid) for n in ("plain", "setuid", "odd")}
    assert got == {"plain": (0o644, 0, 0), "setuid": (0o4755, 1000, 0), "odd": (0o460, 0, 5)}
