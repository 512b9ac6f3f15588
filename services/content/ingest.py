"""In-progress ingests on disk and the write sessions over them.

An ingest lives in ``<root>/content/ingest/<sha256(namespace/ref)>/``: the ref is hashed,
never used as a path (``../../x`` is just a name). Files: ``meta.json`` (namespace, ref,
total, expected, lease, started_at), ``data`` (the bytes so far; its size is the offset,
its mtime the update time) and ``lock``. A session holds ``flock`` on ``lock``: the lock
belongs to the open file, so a second writer of the ref is refused whether it asks this
instance or another one, and a killed instance's locks vanish with it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flotilla.libs.directio import DropBehind, read_cached
from flotilla.libs.errors import Unavailable


@dataclass
class IngestMeta:
    namespace: str
    ref: str
    total: int = 0
    expected: str = ""
    lease: str = ""
    started_at: int = 0
    # when its last writer last wrote, said at its close (ns; 0: not said): as containerd's
    # "updatedat" file, since the data file's mtime may come a tick early or, for bytes
    # written behind the writer's answer, late
    updated_at: int = 0
    # the digest a commit is moving into place (opened with no expected digest, as
    # containerd's metadata opens its backend's writers): what the ingest became if its
    # instance died between that move and the blob's record
    committing: str = ""


def ingest_dir(root: Path, namespace: str, ref: str) -> Path:
    return root / hashlib.sha256(f"{namespace}/{ref}".encode()).hexdigest()


def read_meta(path: Path) -> IngestMeta | None:
    try:
        return IngestMeta(**json.loads((path / "meta.json").read_text()))
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError):
        return None


def write_meta(path: Path, meta: IngestMeta) -> None:
    """Replaces the ingest's meta at once (a reader sees the old or the new one)."""
    tmp = path / "meta.json.tmp"
    tmp.write_text(json.dumps(asdict(meta)))
    os.replace(tmp, path / "meta.json")


def start_meta(path: Path, meta: IngestMeta) -> None:
    """The meta of an ingest started afresh, written in place: torn by a crash, it reads as
    no meta, which is what an ingest with no data is anyway."""
    (path / "meta.json").write_text(json.dumps(asdict(meta)))


def go_duration(seconds: float) -> str:
    """A duration as Go prints one (``1.5s``, ``250ms``)."""
    if seconds >= 1:
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    return f"{seconds * 1000:.6f}".rstrip("0").rstrip(".") + "ms"


def _make_dir(path: Path) -> None:
    for _ in range(100):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileExistsError:
            continue  # an ended ingest's directory moved away between mkdir and its check: again
    raise Unavailable(f"ingest directory {path} keeps changing under us: unavailable")


def lock(path: Path, namespace: str, ref: str) -> int:
    """Take the ref's lock; raise Unavailable naming how long another writer has held it."""
    lock_path = path / "lock"
    for _ in range(100):
        _make_dir(path)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # the ingest ended and its directory moved away after our mkdir: again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                since = float((path / "lock").read_text() or "0")
            except (OSError, ValueError):
                since = time.time()
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
            raise Unavailable(f"ref {namespace}/{ref} locked for {go_duration(max(0.0, time.time() - since))} "
                              f"(since {when}): unavailable") from None
        # the ingest may have been committed (and its directory removed) between our
        # open and our flock: then we hold a lock nobody else can see; start again
        try:
            st = os.stat(lock_path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino == os.fstat(fd).st_ino:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(time.time()).encode(), 0)
            return fd
        os.close(fd)
    raise Unavailable(f"ref {namespace}/{ref}: its ingest keeps ending under us: unavailable")


class Hasher:
    """The running digest of an ingest's data file, fed in order. What it reads of the
    file it drops from the cache behind itself (libs/directio: the writer's next bytes
    reuse those pages)."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self.reset()

    def reset(self) -> None:
        """Start over from the file's first byte."""
        self.h = hashlib.new(self.algorithm)
        self.offset = 0
        self.behind = DropBehind()

    def update(self, data: bytes | memoryview) -> None:
        self.h.update(data)
        self.offset += len(data)

    def catch_up(self, fd: int, end: int) -> None:
        """Hash the file's bytes from what was hashed up to ``end`` (read from the page cache)."""
        while self.offset < end:
            view = read_cached(fd, self.offset, end - self.offset)
            if not view:
                break
            self.update(view)
        self.behind.passed(fd, self.offset)

    def synced(self, fd: int) -> None:
        """The file was just fsynced: what was hashed need not stay cached."""
        self.behind.synced(fd, self.offset)

    def digest(self) -> str:
        return f"{self.algorithm}:{self.h.hexdigest()}"


def file_digest(path: Path, size: int) -> str:
    """The digest of the file at ``path`` (its algorithm its directory's name, as blobs are
    kept), or "" when it does not hold ``size`` bytes."""
    h = Hasher(path.parent.name)
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != size:
            return ""
        h.catch_up(fd, size)
    finally:
        os.close(fd)
    return h.digest()
