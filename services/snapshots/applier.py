"""Applying a layer (a tar stream) onto a directory, never touching anything outside it.

Every path is resolved inside the root component by component from an open directory
descriptor: each step is ``openat(O_NOFOLLOW|O_DIRECTORY)``; a symlink met on the way is
read and followed *within* the root (an absolute target restarts at the root, ``..`` stops
at the root), as containerd's ``fs.RootPath`` does. The last component is never followed:
it is created, replaced or linked with ``*at`` calls relative to its parent's descriptor.
So ``..`` entries, absolute names, symlinks out of the root written through, and hardlinks
to outside files all land inside the root (or fail), whatever string they carry.

Two whiteout forms: ``overlay`` (a whiteout becomes a 0/0 character device, an opaque
directory gets ``trusted.overlay.opaque=y``) for an overlay upper dir, and ``plain``
(deletions) for a plain directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from flotilla.libs.directio import FileReader

from .layerstream import CHUNK, MEDIA_TYPES, Decompressed, LayerError  # noqa: F401 (MEDIA_TYPES: for callers)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_MAX_LINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ParentNeeded(LayerError):
    """A layer applied detached (without its parent layers, to be stacked on them later) that
    needs their files: a hardlink to a lower file, or a directory it does not create itself."""


# -- resolution inside the root --------------------------------------------------------

def _split(name: str) -> list[str]:
    return [c for c in name.split("/") if c not in ("", ".")]


class Root:
    """An open root directory and the scoped path resolution inside it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, _DIR_FLAGS)
        self._cache: dict[tuple[str, ...], int] = {}
        self._real: dict[tuple[str, ...], tuple[str, ...]] = {}
        # called as (parent fd, name, real parts) after a missing parent dir is made
        self.on_mkdir: Callable[[int, str, list[str]], None] | None = None

    def close(self) -> None:
        self.forget()
        os.close(self.fd)

    def forget(self) -> None:
        """Drop cached directory descriptors (after anything was removed or replaced)."""
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        self._real.clear()

    def _open_real(self, parts: list[str]) -> int:
        """A new descriptor of the directory at real (symlink-free) ``parts``."""
        fd = os.dup(self.fd)
        try:
            for p in parts:
                nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def resolve_dir(self, comps: list[str], create: bool) -> list[str]:
        """Resolve directory components to real ones inside the root, symlinks scoped."""
        resolved: list[str] = []
        queue = list(comps)
        links = 0
        while queue:
            c = queue.pop(0)
            if c in ("", "."):
                continue
            if c == "..":
                if resolved:
                    resolved.pop()
                continue
            dfd = self._open_real(resolved)
            try:
                try:
                    st = os.stat(c, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(c, 0o755, dir_fd=dfd)
                    resolved.append(c)
                    if self.on_mkdir is not None:
                        self.on_mkdir(dfd, c, list(resolved))
                    continue
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > _MAX_LINKS:
                        raise LayerError(f"too many levels of symbolic links in {'/'.join(comps)}")
                    target = os.readlink(c, dir_fd=dfd)
                    if target.startswith("/"):
                        resolved = []
                    queue = target.split("/") + queue
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise LayerError(f"{'/'.join(resolved + [c])}: not a directory")
                resolved.append(c)
            finally:
                os.close(dfd)
        return resolved

    def parent(self, name: str, create: bool = True) -> tuple[int, str, tuple[str, ...]]:
        """(parent dir fd, base name, real parent parts) for an entry name; fd is cached."""
        comps = _split(name)
        if not comps:
            return self.fd, "", ()
        *dirs, base = comps
        key = tuple(dirs)
        fd = self._cache.get(key)
        if fd is None:
            real = self.resolve_dir(dirs, create)
            fd = self._open_real(real)
            self._cache[key] = fd
            self._real[key] = tuple(real)
        return fd, base, self._real[key]


# -- applying ------------------------------------------------------------------------

@dataclass
class _State:
    overlay: bool
    parents: list[str] = field(default_factory=list)
    detached: bool = False  # overlay upper whose parent layers are not there yet
    created: set[tuple[str, ...]] = field(default_factory=set)   # real paths this layer made
    dir_times: list[tuple[tuple[str, ...], int, int]] = field(default_factory=list)
    whiteouts: int = 0  # whiteout and opaque entries met


def _remove(dfd: int, name: str) -> None:
    """Remove ``name`` under ``dfd`` whatever it is, never following a symlink."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            for child in os.listdir(sub):
                _remove(sub, child)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def _remove_not_created(dfd: int, parts: tuple[str, ...], created: set[tuple[str, ...]]) -> None:
    for child in os.listdir(dfd):
        path = parts + (child,)
        if path not in created:
            _remove(dfd, child)
            continue
        st = os.stat(child, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(child, _DIR_FLAGS, dir_fd=dfd)
            try:
                _remove_not_created(sub, path, created)
            finally:
                os.close(sub)


def _exists(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _set_xattrs(dfd: int, name: str, member: tarfile.TarInfo, is_dir: bool) -> None:
    xattrs = {k[len("SCHILY.xattr."):]: v for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    if not xattrs or member.issym():
        return
    flags = (_DIR_FLAGS if is_dir else os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    fd = os.open(name, flags, dir_fd=dfd)
    try:
        target: int | str = fd if is_dir else f"/proc/self/fd/{fd}"
        for key, value in xattrs.items():
            raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            try:
                os.setxattr(target, key, raw)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
    finally:
        os.close(fd)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_file(fd: int, member: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
    """Write the entry's data into the new file ``fd``, then its owner, mode, xattrs and
    times through the same descriptor (no further path lookups)."""
    try:
        src = tf.extractfile(member)
        assert src is not None
        if member.issparse():
            # write only the data blocks: holes stay holes, however large the declared size;
            # the unbuffered reader seeks forward in the stream without reading the holes
            raw = src.raw  # type: ignore[attr-defined]
            for offset, size in member.sparse or []:
                raw.seek(offset)
                os.lseek(fd, offset, os.SEEK_SET)
                left = size
                while left > 0:
                    chunk = raw.read(min(CHUNK, left))
                    if not chunk:
                        raise LayerError(f"{member.name}: unexpected end of sparse data")
                    os.write(fd, chunk)
                    left -= len(chunk)
            os.ftruncate(fd, member.size)
        else:
            left = member.size
            while left > 0:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise LayerError(f"{member.name}: unexpected end of data")
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                left -= len(chunk)
        # owner and mode only where the new file's differ: each change is a journal entry,
        # and on a busy ext4 each waits (docs/snapshots.md); most files of a layer are
        # root's and have the mode they were created with
        was = os.fstat(fd)
        chowned = (was.st_uid, was.st_gid) != (member.uid, member.gid)
        if chowned:
            os.fchown(fd, member.uid, member.gid)
        mode = _mode(member.mode)
        if chowned or stat.S_IMODE(was.st_mode) != mode:  # after chown, which clears setuid bits
            os.fchmod(fd, mode)
        xattrs = _xattrs_of(member)
        for key, value in xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
        mtime = _time_ns(member.pax_headers.get("mtime"), member.mtime)
        os.utime(fd, ns=(_time_ns(member.pax_headers.get("atime"), mtime / 1e9), mtime))
    finally:
        os.close(fd)


def _mode(mode: int) -> int:
    return stat.S_IMODE(mode) | (mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX))


def _xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    return {k[len("SCHILY.xattr."):]: (v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v)
            for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")}


def _copy_up(root: Root, state: _State, link_comps: list[str]) -> bool:
    """Overlay mode: a hardlink's target only in a lower layer is copied into the upper."""
    for parent in state.parents:
        lower = Root(parent)
        try:
            try:
                real = lower.resolve_dir(link_comps[:-1], create=False)
                lfd = lower._open_real(real)
            except (FileNotFoundError, NotADirectoryError, LayerError):
                continue
            try:
                st = _exists(lfd, link_comps[-1])
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue
                dfd = root._open_real(root.resolve_dir(real, create=True))
                try:
                    src = os.open(link_comps[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lfd)
                    dst = os.open(link_comps[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
                    try:
                        while chunk := os.read(src, CHUNK):
                            os.write(dst, chunk)
                        os.fchown(dst, st.st_uid, st.st_gid)
                        os.fchmod(dst, stat.S_IMODE(st.st_mode))
                        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(src)
                        os.close(dst)
                    return True
                finally:
                    os.close(dfd)
            finally:
                os.close(lfd)
        finally:
            lower.close()
    return False


def _apply_member(root: Root, state: _State, member: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
    comps = _split(member.name)
    # ".." components are resolved (and stopped at the root) by Root.resolve_dir; a name
    # that ends in ".." or names the root itself is skipped, as containerd does
    if not comps or comps[-1] == "..":
        return
    dfd, base, real_parent = root.parent(member.name)
    if base.startswith(WHITEOUT):
        state.whiteouts += 1
        if base == OPAQUE:
            if state.overlay:
                os.setxattr(dfd, OPAQUE_XATTR, b"y")
            else:  # remove what lower layers put there, keep what this layer made
                _remove_not_created(dfd, real_parent, state.created)
                root.forget()
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # aufs metadata (.wh..wh.plnk etc.)
        target = base[len(WHITEOUT):]
        if target in ("", ".", ".."):
            return
        if _exists(dfd, target) is not None:
            _remove(dfd, target)
            root.forget()
            dfd, base, real_parent = root.parent(member.name)  # (forget closed the descriptor)
        if state.overlay:
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=dfd)
            os.chown(target, member.uid, member.gid, dir_fd=dfd, follow_symlinks=False)
        return

    path = real_parent + (base,)
    if member.isreg():
        # the common case, in as few system calls as possible: create, and only when the
        # name is taken look at what is there and replace it
        try:
            fd = os.open(base, _CREATE, _mode(member.mode) & 0o777, dir_fd=dfd)
        except FileExistsError:
            _remove(dfd, base)
            root.forget()
            dfd, base, real_parent = root.parent(member.name)
            fd = os.open(base, _CREATE, _mode(member.mode) & 0o777, dir_fd=dfd)
        _write_file(fd, member, tf)
        state.created.add(path)
        return
    existing = _exists(dfd, base)
    if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
        _remove(dfd, base)
        root.forget()
        dfd, base, real_parent = root.parent(member.name)

    if member.isdir():
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(base, 0o700, dir_fd=dfd)
    elif member.issym():
        os.symlink(member.linkname, base, dir_fd=dfd)
    elif member.islnk():
        link_comps = _split(member.linkname)
        if not link_comps or link_comps[-1] == "..":
            raise LayerError(f"{member.name}: invalid hardlink target {member.linkname!r}")
        try:
            ldfd, lbase, _ = root.parent(member.linkname, create=False)
            found = _exists(ldfd, lbase) is not None
        except (FileNotFoundError, NotADirectoryError, LayerError):
            found = False
        if not found:
            if state.detached:
                raise ParentNeeded(f"{member.name}: hardlink target {member.linkname} may be in a parent layer")
            if not (state.overlay and _copy_up(root, state, link_comps)):
                raise LayerError(f"{member.name}: hardlink target {member.linkname} not found in the layer's root")
            root.forget()
            ldfd, lbase, _ = root.parent(member.linkname, create=False)
            dfd, base, real_parent = root.parent(member.name)
        os.link(lbase, base, src_dir_fd=ldfd, dst_dir_fd=dfd, follow_symlinks=False)
        # as containerd does, the link's own header then sets owner, mode and times of the
        # shared inode (unless it links a symlink)
        if stat.S_ISLNK(os.stat(base, dir_fd=dfd, follow_symlinks=False).st_mode):
            state.created.add(path)
            return
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=dfd)
    elif member.isfifo():
        os.mkfifo(base, 0o600, dir_fd=dfd)
    else:
        return  # unknown entry types are skipped, as containerd does
    state.created.add(path)

    os.chown(base, member.uid, member.gid, dir_fd=dfd, follow_symlinks=False)
    if not member.issym():
        _chmod(dfd, base, member.mode)
    _set_xattrs(dfd, base, member, member.isdir())
    ns = _time_ns(member.pax_headers.get("mtime"), member.mtime)
    if member.isdir():
        state.dir_times.append((path, ns, ns))  # set last: entries inside change it
    else:
        atime = _time_ns(member.pax_headers.get("atime"), ns / 1e9)
        os.utime(base, ns=(atime, ns), dir_fd=dfd, follow_symlinks=False)


def _time_ns(pax: str | None, fallback: float) -> int:
    """A pax time ("sec[.frac]") to exact nanoseconds; floats would round them."""
    if pax:
        try:
            sec, _, frac = pax.partition(".")
            return int(sec) * 1_000_000_000 + (int((frac + "000000000")[:9]) if frac else 0) * (-1 if sec.startswith("-") else 1)
        except ValueError:
            pass
    return int(round(fallback * 1e9))


def _chmod(dfd: int, name: str, mode: int) -> None:
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", _mode(mode))
    finally:
        os.close(fd)


def _lower_dir_meta(parents: list[str]) -> Callable[[int, str, list[str]], None]:
    """Overlay mode: a parent dir made in the upper takes the lower dir's owner, mode,
    times and xattrs, or the merged view would show ours instead (containerd's mkparent)."""
    def copy(dfd: int, name: str, parts: list[str]) -> None:
        for lower_path in parents:
            lower = Root(lower_path)
            try:
                fd = lower._open_real(parts)  # O_NOFOLLOW all the way: a symlink is a miss
            except OSError:
                continue
            finally:
                lower.forget()
                os.close(lower.fd)
            try:
                st = os.fstat(fd)
                for key in os.listxattr(fd):
                    if not key.startswith("trusted.overlay."):
                        with contextlib.suppress(OSError):
                            os.setxattr(f"/proc/self/fd/{dfd}/{name}", key, os.getxattr(fd, key))
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                _chmod(dfd, name, st.st_mode)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(fd)
            return
    return copy


def _parent_needed(dfd: int, name: str, parts: list[str]) -> None:
    raise ParentNeeded(f"{'/'.join(parts)}: a directory the layer does not create takes its parent layer's metadata")


def apply_tar(stream: BinaryIO, root_path: str, overlay: bool, parents: list[str] | None = None,
              detached: bool = False) -> int:
    """Apply an uncompressed tar stream onto ``root_path``.

    ``detached``: ``root_path`` is an overlay upper dir whose parent layers are not below it
    yet (a parallel unpack stacks it on them afterwards). Whiteouts take the overlay form, and
    whatever would consult a parent layer raises ``ParentNeeded`` instead, so the caller can
    apply that layer onto its parent as usual and get the same tree. Returns how many
    whiteout and opaque entries the layer had.
    """
    root = Root(root_path)
    state = _State(overlay=overlay or detached, parents=[] if detached else list(parents or []),
                   detached=detached)
    if detached:
        root.on_mkdir = _parent_needed
    elif overlay and state.parents:
        root.on_mkdir = _lower_dir_meta(state.parents)
    try:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|", errorlevel=2)  # type: ignore[arg-type]
            for member in tf:
                _apply_member(root, state, member, tf)
        except tarfile.TarError as exc:
            raise LayerError(f"malformed layer: {exc}") from None
        for parts, atime, mtime in reversed(state.dir_times):
            try:
                fd = root._open_real(list(parts))
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)
        return state.whiteouts
    finally:
        root.close()


@dataclass
class Applied:
    digest: str
    size: int
    whiteouts: int = 0  # (see apply_tar)


def diff_id_error(digest: str, expected: str) -> str:
    """containerd's words for a layer whose uncompressed digest is not ``expected`` ("" when
    it is, or nothing is expected)."""
    return f"wrong diff id calculated on extraction {digest!r}, expected {expected!r}" \
        if expected and expected != digest else ""


def apply_layer(blob: str, media_type: str, root_path: str, overlay: bool,
                parents: list[str] | None = None, expected: str = "", detached: bool = False) -> Applied:
    """Decompress the layer file ``blob``, apply it, and check its uncompressed digest.

    Runs in a worker process: everything it needs is in its arguments.
    """
    if media_type not in MEDIA_TYPES:
        raise LayerError(f"failed to get stream processor for {media_type}: no processor for media-type")
    with FileReader(blob) as raw, Decompressed(raw) as stream:  # type: ignore[arg-type]
        whiteouts = apply_tar(stream, root_path, overlay, parents, detached)  # type: ignore[arg-type]
        stream.drain()  # the digest covers the tar's trailing blocks too
    digest = "sha256:" + stream.hash.hexdigest()
    if err := diff_id_error(digest, expected):
        raise LayerError(err)
    return Applied(digest=digest, size=stream.size, whiteouts=whiteouts)
