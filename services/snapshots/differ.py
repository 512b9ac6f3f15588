"""Computing a layer from two directory trees (containerd's walking differ, double walk).

Walks ``upper`` against ``lower``: what is new or changed becomes an entry, what is gone
becomes a ``.wh.`` whiteout; hardlinks within the layer stay hardlinks. Runs in a worker
process: everything it needs is in its arguments.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from .applier import WHITEOUT

_SKIP_XATTRS = ("trusted.overlay.",)  # overlay's own bookkeeping never enters a layer


class _HashingWriter:
    """Counts and hashes the uncompressed tar while passing it on."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(_SKIP_XATTRS):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _changed(lpath: str, lst: os.stat_result, upath: str, ust: os.stat_result) -> bool:
    if stat.S_IFMT(lst.st_mode) != stat.S_IFMT(ust.st_mode):
        return True
    if (lst.st_mode, lst.st_uid, lst.st_gid) != (ust.st_mode, ust.st_uid, ust.st_gid):
        return True
    if stat.S_ISCHR(ust.st_mode) or stat.S_ISBLK(ust.st_mode):
        if lst.st_rdev != ust.st_rdev:
            return True
    if stat.S_ISLNK(ust.st_mode):
        return os.readlink(lpath) != os.readlink(upath) or lst.st_mtime_ns != ust.st_mtime_ns
    if _xattrs(lpath) != _xattrs(upath):
        return True
    if stat.S_ISDIR(ust.st_mode):
        return lst.st_mtime_ns != ust.st_mtime_ns
    if stat.S_ISREG(ust.st_mode):
        if lst.st_size != ust.st_size or lst.st_mtime_ns != ust.st_mtime_ns:
            return True
        # equal size and time: times truncated to seconds prove nothing, compare bytes
        return ust.st_mtime_ns % 1_000_000_000 == 0 and not _same_content(lpath, upath)
    return lst.st_mtime_ns != ust.st_mtime_ns


class _Writer:
    def __init__(self, tf: tarfile.TarFile, upper: str) -> None:
        self.tf, self.upper = tf, upper
        self.links: dict[tuple[int, int], str] = {}
        self.dirs: set[str] = set()  # directories already in the layer

    def parents(self, rel: str) -> None:
        """Every entry's parent directories go in first, with their real metadata (as
        containerd's change writer does), so an applier never has to invent them."""
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.entry(d, os.lstat(os.path.join(self.upper, d)))

    def entry(self, rel: str, st: os.stat_result) -> None:
        self.parents(rel)
        if stat.S_ISDIR(st.st_mode):
            if rel in self.dirs:
                return
            self.dirs.add(rel)
        path = os.path.join(self.upper, rel)
        info = tarfile.TarInfo(rel + ("/" if stat.S_ISDIR(st.st_mode) else ""))
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.mtime = st.st_mtime_ns // 1_000_000_000
        info.uname = info.gname = ""
        xattrs = _xattrs(path)
        pax = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
        # times in whole seconds, as containerd's differ writes them "for compatibility":
        # the same tree gives the same layer bytes on both
        info.pax_headers = pax
        ident = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and ident in self.links:
            info.type, info.linkname = tarfile.LNKTYPE, self.links[ident]
            self.tf.addfile(info)
            return
        if stat.S_ISREG(st.st_mode):
            info.type, info.size = tarfile.REGTYPE, st.st_size
            if st.st_nlink > 1:
                self.links[ident] = rel
            with open(path, "rb") as f:
                self.tf.addfile(info, f)
            return
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            return  # sockets do not go into layers
        self.tf.addfile(info)

    def whiteout(self, rel: str) -> None:
        self.parents(rel)
        parent, name = os.path.split(rel)
        info = tarfile.TarInfo(os.path.join(parent, WHITEOUT + name))
        info.mode, info.mtime = 0o644, 0
        self.tf.addfile(info)

    def subtree(self, rel: str) -> None:
        """Everything under an added directory."""
        base = os.path.join(self.upper, rel)
        for name in sorted(os.listdir(base)):
            child = os.path.join(rel, name)
            st = os.lstat(os.path.join(self.upper, child))
            self.entry(child, st)
            if stat.S_ISDIR(st.st_mode):
                self.subtree(child)


def _walk(w: _Writer, lower: str, rel: str) -> None:
    upper_dir = os.path.join(w.upper, rel)
    lower_dir = os.path.join(lower, rel)
    unames = set(os.listdir(upper_dir))
    lnames = set(os.listdir(lower_dir))
    for name in sorted(unames | lnames):
        child = os.path.join(rel, name) if rel else name
        if name not in unames:
            w.whiteout(child)
            continue
        ust = os.lstat(os.path.join(w.upper, child))
        if name not in lnames:
            w.entry(child, ust)
            if stat.S_ISDIR(ust.st_mode):
                w.subtree(child)
            continue
        lst = os.lstat(os.path.join(lower, child))
        if stat.S_ISDIR(ust.st_mode) and stat.S_ISDIR(lst.st_mode):
            if _changed(os.path.join(lower, child), lst, os.path.join(w.upper, child), ust):
                w.entry(child, ust)
            _walk(w, lower, child)
        elif _changed(os.path.join(lower, child), lst, os.path.join(w.upper, child), ust):
            w.entry(child, ust)
            if stat.S_ISDIR(ust.st_mode):
                w.subtree(child)


@dataclass
class Written:
    digest: str            # of the written (compressed) blob
    size: int
    uncompressed: str      # of the tar


def write_diff(lower: str, upper: str, out_path: str, compression: str = "gzip") -> Written:
    with open(out_path, "wb") as out:
        compressor: BinaryIO
        if compression == "gzip":
            compressor = gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6)  # type: ignore[assignment]
        elif compression == "zstd":
            import zstandard
            compressor = zstandard.ZstdCompressor().stream_writer(out, closefd=False)  # type: ignore[assignment]
        else:
            compressor = out
        hashing = _HashingWriter(compressor)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
            _walk(_Writer(tf, upper), lower, "")
        if compressor is not out:
            compressor.close()
    h = hashlib.sha256()
    size = 0
    with open(out_path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return Written(digest="sha256:" + h.hexdigest(), size=size, uncompressed="sha256:" + hashing.hash.hexdigest())
