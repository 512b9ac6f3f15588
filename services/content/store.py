"""The content store's logic, with containerd's rules and messages; no NATS here.

Blobs live once on disk at ``<root>/content/blobs/<algorithm>/<hex>``; each namespace that
has a blob owns a record of it (``db.owners``). Methods are synchronous (disk, SQLite);
the server runs them in threads. Several instances may share one root.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection, Row

from flotilla.libs import filters
from flotilla.libs.afterwards import Afterwards
from flotilla.libs.api.content import (
    CHUNK, Info, LocalFile, Status, WriterOpen, WriterSession, digest_error, session_gone,
)
from flotilla.libs.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OutOfRange,
)
from flotilla.libs.identifiers import validate_labels

from . import db
from .copies import from_registry, record_blob
from .ingest import Hasher, IngestMeta, ingest_dir, lock, read_meta, start_meta, write_meta

log = logging.getLogger(__name__)


def check_digest(digest: str) -> None:
    err = digest_error(digest)
    if err:
        raise InvalidArgument(f"{digest}: {err}: invalid argument")


def not_found(digest: str) -> NotFound:
    return NotFound(f"content digest {digest}: not found")


def _validate_labels(labels: dict[str, str]) -> None:
    try:
        validate_labels(labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"info.Labels: {exc.message}") from None


def _info(row: Row[Any]) -> Info:
    return Info(digest=row.digest, size=row.size, created_at=row.created_at, updated_at=row.updated_at,
                labels=json.loads(row.labels), leases=json.loads(row.leases))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Session:
    id: str
    namespace: str
    ref: str
    path: Path
    lock_fd: int
    lease: str
    started_at: int
    total: int = 0
    expected: str = ""
    shared: Info | None = None     # the expected blob is stored: commit takes no bytes
    fd: int = -1                   # the data file, read-write
    hasher: Hasher = field(default_factory=Hasher)
    offset: int = 0                # bytes the data file holds for this session
    updated_at: int = 0            # last write said or seen here (ns), 0: the data file's mtime
    caller: str = ""               # a farm: the writer's host
    touched: float = field(default_factory=time.monotonic)
    mutex: threading.Lock = field(default_factory=threading.Lock)


def _clear(trash: Path | None, lock_fd: int) -> None:
    """An ended ingest's leftovers: its lock and its files."""
    os.close(lock_fd)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


class ContentStore:
    def __init__(self, root: Path, instance: str = "", host: str = "", db_url: str = "",
                 copies: int = 2) -> None:
        self.root = root / "content"
        self.host = host  # tags the files it hands out: only its own host reads them directly
        # a farm's store (records in its database): a blob's bytes may be on other hosts
        # only (services/content/copies.py); ``copies``: hosts that hold a written blob
        self.farm, self.copies = bool(db_url), copies
        self.blobs = self.root / "blobs"
        self.ingests = self.root / "ingest"
        # ended ingests wait here for the clearing thread (and a kill leaves them here)
        self.trash = self.root / "ingest-trash"
        for d in (self.blobs, self.ingests, self.trash):
            d.mkdir(parents=True, exist_ok=True)
        for old in self.trash.iterdir():  # left by a killed instance; another one's go as well, harmlessly
            shutil.rmtree(old, ignore_errors=True)
        self._clearing = Afterwards("content-clear")
        self.engine, self.reader = db.open_engines(self.root / "owners.db", db_url)
        self.instance = instance or uuid.uuid4().hex[:12]
        self.sessions: dict[str, Session] = {}

    def close(self) -> None:
        for sid in list(self.sessions):
            self.w_close(sid)
        self._clearing.close()
        self.engine.dispose()
        self.reader.dispose()

    def blob_path(self, digest: str) -> Path:
        alg, hexpart = digest.split(":", 1)
        return self.blobs / alg / hexpart

    # -- ownership records -------------------------------------------------------------

    def _row(self, conn: Connection, namespace: str, digest: str, for_update: bool = False) -> Row[Any] | None:
        return conn.execute(db.OWNER_ROW_FOR_UPDATE if for_update else db.OWNER_ROW,
                            {"namespace": namespace, "digest": digest}).first()

    def stored(self, conn: Connection, digest: str) -> bool:
        """The blob's bytes are here, or (a farm) on some host."""
        if self.blob_path(digest).exists():
            return True
        return self.farm and conn.execute(db.HELD, {"digest": digest}).first() is not None

    def _owned(self, namespace: str, digest: str) -> bool:
        with self.reader.connect() as conn:
            return self._row(conn, namespace, digest) is not None

    def info(self, namespace: str, digest: str) -> Info:
        check_digest(digest)
        with self.reader.connect() as conn:
            row = self._row(conn, namespace, digest)
        if row is None:
            raise not_found(digest)
        return _info(row)

    def list(self, namespace: str, filter_texts: list[str]) -> list[Info]:
        wanted = filters.parse(filter_texts)
        with self.reader.connect() as conn:
            rows = conn.execute(select(db.owners).where(db.owners.c.namespace == namespace)
                                .order_by(db.owners.c.digest)).all()
        out = []
        for row in rows:
            info = _info(row)
            if wanted.matches(filters.lookup_fields({"digest": info.digest},
                                                    info.labels if info.labels else None)):
                out.append(info)
        return out

    def update(self, namespace: str, info: Info, paths: list[str]) -> Info:
        check_digest(info.digest)
        with self.engine.begin() as conn:
            row = self._row(conn, namespace, info.digest, for_update=True)
            if row is None:
                raise not_found(info.digest)
            labels: dict[str, str] = json.loads(row.labels)
            if paths:
                for path in paths:
                    if path.startswith("labels."):
                        key = path[len("labels."):]
                        labels[key] = info.labels.get(key, "")
                    elif path == "labels":
                        labels = dict(info.labels)
                    else:
                        raise InvalidArgument(f'cannot update "{path}" field on content info '
                                              f'"{info.digest}": invalid argument')
            else:
                labels = dict(info.labels)
            labels = {k: v for k, v in labels.items() if v}  # an empty value removes the label
            _validate_labels(labels)
            now = time.time_ns()
            conn.execute(db.UPDATE_OWNER, {"b_namespace": namespace, "b_digest": info.digest,
                                         "labels": json.dumps(labels), "updated_at": now})
        updated = _info(row)
        updated.labels, updated.updated_at = labels, now
        return updated

    def delete(self, namespace: str, digest: str, leases_seen: list[str] | None = None) -> bool:
        """Forget the namespace's record; True when that was the last and the blob went.
        ``leases_seen``: a collection's delete, which keeps a record that gained a lease since
        its mark listed it (raced by a writer that found the blob there): FailedPrecondition,
        so that nothing says it went (no /content/delete event)."""
        check_digest(digest)
        with self.engine.begin() as conn:
            db.lock_digest(conn, digest)
            if leases_seen is not None:
                row = self._row(conn, namespace, digest, for_update=True)
                if row is not None and set(json.loads(row.leases)) - set(leases_seen):
                    raise FailedPrecondition(f"content {digest}: leased since the collection's mark: kept")
            gone = conn.execute(delete(db.owners).where(
                (db.owners.c.namespace == namespace) & (db.owners.c.digest == digest))).rowcount
            if not gone:
                raise not_found(digest)
            # the last owner takes the file with it, inside the write lock: a commit of the
            # same digest waits for us and then finds no file, so it renames its own
            left = conn.execute(select(func.count()).select_from(db.owners)
                                .where(db.owners.c.digest == digest)).scalar()
            if left:
                return False
            if self.farm:  # every host's copy goes: each host unlinks its own (copies.py)
                conn.execute(delete(db.copies).where(db.copies.c.digest == digest))
                conn.execute(delete(db.blobs).where(db.blobs.c.digest == digest))
            try:
                os.unlink(self.blob_path(digest))
            except FileNotFoundError:
                pass
            return True

    def namespace_held(self, namespace: str) -> bool:
        with self.reader.connect() as conn:
            return conn.execute(select(db.owners.c.digest).where(
                db.owners.c.namespace == namespace).limit(1)).first() is not None

    def namespaces(self) -> list[str]:
        with self.reader.connect() as conn:
            names = {r[0] for r in conn.execute(select(db.owners.c.namespace).distinct())}
        for path in self.ingests.iterdir():
            meta = read_meta(path)
            if meta is not None:
                names.add(meta.namespace)
        return sorted(names)

    def release_lease(self, namespace: str, lease: str) -> int:
        changed = 0
        # a lease id's "%" and "_" are no wildcards; one too long for a pattern is looked for row by row
        pattern = json.dumps(lease).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self.engine.begin() as conn:
            rows = conn.execute(db.LEASED, {"namespace": namespace, "lease_json": pattern}).all() \
                if len(pattern.encode()) < db.LIKE_MAX \
                else conn.execute(db.IN_NAMESPACE, {"namespace": namespace}).all()
            for row in rows:
                leases = json.loads(row.leases)
                if lease not in leases:
                    continue
                leases = [x for x in leases if x != lease]
                conn.execute(db.UPDATE_OWNER, {"b_namespace": namespace, "b_digest": row.digest,
                                             "leases": json.dumps(leases)})
                changed += 1
        return changed

    def _add_lease(self, namespace: str, digest: str, lease: str) -> None:
        with self.engine.begin() as conn:
            row = self._row(conn, namespace, digest, for_update=True)
            if row is None:
                return
            leases = json.loads(row.leases)
            if lease not in leases:
                conn.execute(db.UPDATE_OWNER, {"b_namespace": namespace, "b_digest": digest,
                                             "leases": json.dumps([*leases, lease])})

    # -- reading -----------------------------------------------------------------------

    def local_file(self, namespace: str, digest: str) -> LocalFile:
        info = self.info(namespace, digest)
        path = self.blob_path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFound(f"blob {digest} expected at {path}: not found") from None
        return LocalFile(str(path), st.st_dev, st.st_ino, info.size, self.host)

    def read(self, namespace: str, digest: str, offset: int, size: int) -> bytes:
        info = self.info(namespace, digest)
        if offset > info.size:
            raise OutOfRange(f"read past object length {info.size} bytes")
        offset = max(0, offset)
        size = info.size - offset if size < 0 else min(size, info.size - offset)
        with open(self.blob_path(digest), "rb") as f:
            return os.pread(f.fileno(), min(size, CHUNK), offset)

    # -- ingests -----------------------------------------------------------------------

    def _status(self, path: Path, meta: IngestMeta) -> Status:
        try:
            st = os.stat(path / "data")
            offset, updated = st.st_size, meta.updated_at or st.st_mtime_ns
        except FileNotFoundError:
            offset, updated = 0, meta.started_at
        return Status(ref=meta.ref, offset=offset, total=meta.total, expected=meta.expected,
                      started_at=meta.started_at, updated_at=updated)

    def status(self, namespace: str, ref: str) -> Status:
        path = ingest_dir(self.ingests, namespace, ref)
        meta = read_meta(path)
        if meta is None or meta.namespace != namespace or meta.ref != ref:
            raise NotFound(f"reference {ref}: not found")
        return self._status(path, meta)

    def list_statuses(self, namespace: str, filter_texts: list[str]) -> list[Status]:
        wanted = filters.parse(filter_texts)
        out = []
        for path in sorted(self.ingests.iterdir()):
            meta = read_meta(path)
            if meta is None or meta.namespace != namespace:
                continue
            if wanted.matches(lambda p, ref=meta.ref: (ref, True) if p[0] == "ref" else ("", False)):
                out.append(self._status(path, meta))
        return out

    def abort(self, namespace: str, ref: str) -> None:
        path = ingest_dir(self.ingests, namespace, ref)
        meta = read_meta(path)
        if meta is None or meta.ref != ref:
            raise NotFound(f"reference {ref}: not found")
        fd = lock(path, namespace, ref)  # refuses while a writer holds the ref
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)

    # -- write sessions ----------------------------------------------------------------

    def open_writer(self, req: WriterOpen) -> WriterSession:
        if not req.ref:
            raise InvalidArgument("ref must not be empty: invalid argument")
        shared: Info | None = None
        if req.expected:
            err = digest_error(req.expected)
            if err:
                raise InvalidArgument("calculating expected blob path for writer: cannot calculate blob path "
                                      f"from invalid digest: {err}: invalid argument")
            with self.reader.connect() as conn:
                owners = conn.execute(db.OWNERS, {"digest": req.expected}).all()
            mine = next((r for r in owners if r.namespace == req.namespace), None)
            other = owners[0] if owners else None
            if mine is not None:
                # as containerd: the caller's lease takes the blob before we say it exists
                if req.lease:
                    self._add_lease(req.namespace, req.expected, req.lease)
                raise AlreadyExists(f"content {req.expected}: already exists")
            # containerd's "shared" policy: stored for another namespace, so no bytes needed
            if other is not None and (req.total in (0, other.size)):
                with self.reader.connect() as conn:
                    if self.stored(conn, req.expected):
                        shared = _info(other)
        path = ingest_dir(self.ingests, req.namespace, req.ref)
        lock_fd = lock(path, req.namespace, req.ref)
        try:
            s = Session(id=uuid.uuid4().hex, namespace=req.namespace, ref=req.ref, path=path,
                        lock_fd=lock_fd, lease=req.lease, started_at=time.time_ns(),
                        total=req.total, expected=req.expected, caller=req.host)
            if shared is not None:
                s.shared, s.total, s.offset = shared, shared.size, shared.size
            else:
                self._open_ingest(s, req)
        except BaseException:
            os.close(lock_fd)
            raise
        self.sessions[s.id] = s
        return self._session_record(s, with_file=req.local)

    def _open_ingest(self, s: Session, req: WriterOpen) -> None:
        meta = read_meta(s.path)
        if meta is not None and meta.ref == req.ref and meta.namespace == req.namespace \
                and not (req.total > 0 and meta.total > 0 and req.total != meta.total):
            if self._committed_unrecorded(s, meta.committing or meta.expected or req.expected):
                log.info("ingest %s/%s: committed by a killed instance, not recorded: finishing it", s.namespace, s.ref)
                return
            # resume: the data file is the truth; hash it again (hashlib has no saved state)
            s.started_at, s.total, s.updated_at = meta.started_at, meta.total or req.total, meta.updated_at
            s.expected = meta.expected or req.expected
            if req.lease and req.lease != meta.lease:
                meta.lease = req.lease
                write_meta(s.path, meta)
            s.fd = os.open(s.path / "data", os.O_RDWR | os.O_CREAT, 0o644)
            s.hasher.catch_up(s.fd, os.fstat(s.fd).st_size)
            s.offset = s.hasher.offset
            if s.offset:
                log.info("ingest %s/%s: resumed at %d", s.namespace, s.ref, s.offset)
        else:
            s.fd = os.open(s.path / "data", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            start_meta(s.path, IngestMeta(req.namespace, req.ref, req.total, req.expected, req.lease, s.started_at))

    def _committed_unrecorded(self, s: Session, expected: str) -> bool:
        """An instance died in a commit between moving the data into place and recording it:
        the data file is gone, the blob (verified before the move) is there with no owner.
        The commit is finished as a shared one: the record, no bytes."""
        if not expected or digest_error(expected) or (s.path / "data").exists():
            return False
        try:
            size = os.stat(self.blob_path(expected)).st_size
        except FileNotFoundError:
            return False
        s.shared, s.total, s.offset, s.expected = Info(expected, size), size, size, expected
        return True

    def _session_record(self, s: Session, with_file: bool = False) -> WriterSession:
        f = None
        if with_file and s.fd >= 0:
            st = os.fstat(s.fd)
            f = LocalFile(str(s.path / "data"), st.st_dev, st.st_ino, st.st_size, self.host)
        updated = s.updated_at or s.started_at
        if s.fd >= 0 and not s.updated_at:
            updated = os.fstat(s.fd).st_mtime_ns
        digest = s.shared.digest if s.shared else ""
        if not s.shared and s.fd >= 0:
            s.hasher.catch_up(s.fd, os.fstat(s.fd).st_size)
            digest = s.hasher.digest()
        return WriterSession(session=s.id, instance=self.instance, ref=s.ref, offset=s.offset, total=s.total,
                             expected=s.expected, digest=digest, started_at=s.started_at, updated_at=updated,
                             shared=s.shared is not None, file=f)

    def session(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise session_gone(sid)
        s.touched = time.monotonic()
        return s

    @contextlib.contextmanager
    def _locked(self, sid: str) -> Iterator[Session]:
        """Session ``sid`` under its mutex, still live: a commit or close that held the mutex
        meanwhile may have ended it (and closed its file)."""
        s = self.session(sid)
        with s.mutex:
            if self.sessions.get(sid) is not s:
                raise session_gone(sid)
            yield s

    def w_status(self, sid: str) -> WriterSession:
        with self._locked(sid) as s:
            if s.fd >= 0:
                s.offset = max(s.offset, os.fstat(s.fd).st_size)
            return self._session_record(s)

    def w_write(self, sid: str, offset: int, data: bytes) -> int:
        with self._locked(sid) as s:
            if s.shared is not None:
                raise FailedPrecondition(f"ref {s.ref}: content is shared, nothing to write: failed precondition")
            if offset != s.offset:
                raise OutOfRange(f"write @{offset} must occur at current offset {s.offset}")
            view = memoryview(data)
            pos = offset
            while view:
                n = os.pwrite(s.fd, view, pos)
                view, pos = view[n:], pos + n
            if s.hasher.offset == offset:
                s.hasher.update(data)
            s.offset = pos
            s.updated_at = time.time_ns()
            return s.offset

    def w_sync(self, sid: str, offset: int) -> int:
        """The caller wrote the data file itself up to ``offset``: hash what is new (and
        when that is all the ingest's bytes, make them durable: the commit will not wait)."""
        with self._locked(sid) as s:
            if s.shared is not None:
                return s.offset
            s.hasher.catch_up(s.fd, offset)
            s.offset = max(s.offset, s.hasher.offset)
            if 0 < s.total <= s.offset:
                os.fsync(s.fd)
                s.hasher.synced(s.fd)
            return s.offset

    def w_truncate(self, sid: str) -> int:
        with self._locked(sid) as s:
            if s.fd >= 0:
                os.ftruncate(s.fd, 0)
                s.hasher.reset()
            s.offset = 0 if s.shared is None else s.offset
            s.updated_at = time.time_ns()
            return s.offset

    def w_commit(self, sid: str, size: int, expected: str, labels: dict[str, str]) -> Info:
        with self._locked(sid) as s:
            _validate_labels(labels)
            labels = {k: v for k, v in labels.items() if v}
            if expected:
                check_digest(expected)
                if self._owned(s.namespace, expected):
                    # containerd's Write: the expected blob is there, so the ingest goes
                    self._end(s, remove=True)
                    raise AlreadyExists(f"blob with expected digest {expected} exists")
            if s.shared is not None:
                if size and size != s.shared.size:
                    raise FailedPrecondition(f'"{s.ref}" failed size validation: {s.shared.size} != {size}: '
                                             "failed precondition")
                if expected and expected != s.shared.digest:
                    raise FailedPrecondition(f'"{s.ref}" unexpected digest: failed precondition')
                info = self._own(s, s.shared.digest, s.shared.size, labels, None)
                self._end(s, remove=True)
                return info
            end = os.fstat(s.fd).st_size
            s.hasher.catch_up(s.fd, end)
            if s.hasher.offset != end:
                raise FailedPrecondition(f'"{s.ref}" data file changed under the writer: failed precondition')
            s.offset = end
            if size and size != end:
                raise FailedPrecondition(f'"{s.ref}" failed size validation: {end} != {size}: failed precondition')
            actual = s.hasher.digest()
            if expected and expected != actual:
                raise FailedPrecondition(f"unexpected commit digest {actual}, expected {expected}: "
                                         "failed precondition")
            if not s.expected:
                self._note_committing(s, actual)
            os.fsync(s.fd)  # durable before it is visible
            s.hasher.synced(s.fd)
            try:
                info = self._own(s, actual, end, labels, s.path / "data")
            except AlreadyExists:
                self._end(s, remove=True)  # as containerd: the ingest goes, the blob stays
                raise
            self._end(s, remove=True)
            return info

    def _note_committing(self, s: Session, digest: str) -> None:
        """Name the digest in the meta before the data moves: killed between the move and the
        record, the next instance must know which blob the ingest became."""
        meta = read_meta(s.path)
        if meta is not None and meta.committing != digest:
            meta.committing = digest
            write_meta(s.path, meta)

    def _own(self, s: Session, digest: str, size: int, labels: dict[str, str], data: Path | None) -> Info:
        """Make ``digest`` visible in the session's namespace (rename the data in if new)."""
        target = self.blob_path(digest)
        now = time.time_ns()
        with self.engine.begin() as conn:
            db.lock_digest(conn, digest)
            if not target.exists():
                if data is None:
                    if not self.stored(conn, digest):  # a farm's copies are elsewhere
                        raise NotFound(f"content digest {digest}: not found")
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(data, target)
                    _fsync_dir(target.parent)
            if self.farm:
                record_blob(conn, self.host, digest, size, target, 1 if from_registry(s.ref) else self.copies)
            if self._row(conn, s.namespace, digest) is not None:
                raise AlreadyExists(f"content {digest}: already exists")
            leases = [s.lease] if s.lease else []
            conn.execute(db.INSERT_OWNER, dict(namespace=s.namespace, digest=digest, size=size, created_at=now,
                                             updated_at=now, labels=json.dumps(labels), leases=json.dumps(leases)))
        return Info(digest, size, now, now, labels, leases)

    def _end(self, s: Session, remove: bool) -> None:
        self.sessions.pop(s.id, None)
        if s.fd >= 0:
            os.close(s.fd)
            s.fd = -1
        if remove or read_meta(s.path) is None:
            # still under our lock, the ingest leaves its place; its files (and the lock's
            # close, which frees the unlinked lock file: 0.5-3 ms here, waiting on the
            # journal while another commit syncs) go after the answer
            trash = self.trash / uuid.uuid4().hex
            try:
                os.rename(s.path, trash)
            except OSError:
                shutil.rmtree(s.path, ignore_errors=True)
                trash = None
            self._clearing.run(_clear, trash, s.lock_fd)
            return
        os.close(s.lock_fd)

    def w_close(self, sid: str, updated_at: int = 0) -> None:
        """End session ``sid``, keeping its ingest; ``updated_at``: when its writer last wrote."""
        s = self.sessions.get(sid)
        if s is None:
            return
        with s.mutex:
            if s.id not in self.sessions:
                return
            updated_at = updated_at or s.updated_at
            meta = read_meta(s.path) if updated_at and s.shared is None else None
            if meta is not None and meta.updated_at != updated_at:
                meta.updated_at = updated_at
                write_meta(s.path, meta)
            self._end(s, remove=False)

    def expire(self, idle: float) -> list[str]:
        """Close sessions nobody has used for ``idle`` seconds (their caller is gone)."""
        now = time.monotonic()
        old = [sid for sid, s in self.sessions.items() if now - s.touched > idle]
        for sid in old:
            self.w_close(sid)
        return old
