"""Snapshot records and directories, with containerd's rules and messages; no NATS here.

Layout under ``<root>/snapshots/``: ``meta.db`` (records) and ``<snapshotter>/<id>/fs``
(+ ``work`` for overlay actives). Short paths keep more lowerdirs within a page.

Crash safety: a directory is built under a temporary name, then renamed to its id inside
the transaction that inserts its record; a record is deleted before its directory. A kill
at any point therefore leaves at most a directory without a record, which ``cleanup``
(also run at start) reclaims; never a record without its directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from flotilla.libs import filters
from flotilla.libs.afterwards import Afterwards
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flotilla.libs.identifiers import validate_labels

from . import db
from .api import KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, SNAPSHOTTERS, Info, Mount, Usage

T = db.snapshots
# built once: composing the expression costs more than running it
_BY_KEY = select(T).where((T.c.namespace == bindparam("ns")) & (T.c.snapshotter == bindparam("sn"))
                          & (T.c.key == bindparam("key")))
_INSERT = insert(T)
_UPDATE = update(T).where(T.c.id == bindparam("sid"))
_A_CHILD = select(T.c.id).where(T.c.parent_id == bindparam("sid")).limit(1)
_DELETE = delete(T).where(T.c.id == bindparam("sid"))
_TMP = "tmp-"


def _index_off() -> bool:
    # containerd adds index=off whenever the kernel knows the parameter
    return os.path.exists("/sys/module/overlay/parameters/index")


def check_snapshotter(name: str) -> None:
    if not name:
        raise InvalidArgument("snapshotter argument missing: invalid argument")
    if name not in SNAPSHOTTERS:
        raise InvalidArgument(f"snapshotter not loaded: {name}: invalid argument")


def _check_labels(labels: dict[str, str]) -> None:
    try:
        validate_labels(labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"info.Labels: {exc.message}") from None


def disk_usage(path: Path) -> Usage:
    """Bytes (allocated blocks) and inodes under ``path``, hardlinks counted once."""
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames + ([] if dirpath != str(path) else ["."]):
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                continue
            seen.add(ident)
            inodes += 1
            size += st.st_blocks * 512
    return Usage(size=size, inodes=inodes)


class SnapshotStore:
    def __init__(self, root: Path, engine: Engine, reader: Engine | None = None) -> None:
        self.root = root
        self.engine = engine          # transactions that write
        self.reader = reader or engine  # plain reads
        self.index_off = _index_off()
        self._building: set[str] = set()  # temporary dirs of calls in flight
        self._lock = threading.Lock()
        # a removed snapshot's directory is deleted after the answer
        self._purger = Afterwards("snapshot-purge")
        for name in SNAPSHOTTERS:
            (root / name).mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, root: Path) -> "SnapshotStore":
        store = cls(root, *db.open_engines(root / "meta.db"))
        for name in SNAPSHOTTERS:  # nothing is in flight yet: every orphan is reclaimable
            store.cleanup(name)
        return store

    def close(self) -> None:
        """Finish the removals under way and release the database."""
        self._purger.close()
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()

    def wait_purged(self) -> None:
        """Return once every directory removed so far is gone from the disk."""
        self._purger.wait()

    # -- helpers -----------------------------------------------------------------------

    def snap_dir(self, snapshotter: str, sid: int) -> Path:
        return self.root / snapshotter / str(sid)

    def _row(self, conn: Connection, ns: str, sn: str, key: str) -> Any:
        return conn.execute(_BY_KEY, {"ns": ns, "sn": sn, "key": key}).first()

    def _existing(self, conn: Connection, ns: str, sn: str, key: str) -> Any:
        """The snapshot's row, or containerd's NotFound."""
        row = self._row(conn, ns, sn, key)
        if row is None:
            raise NotFound(f"snapshot {key} does not exist: not found")
        return row

    def _by_id(self, conn: Connection, sid: int | None) -> Any:
        return None if sid is None else conn.execute(select(T).where(T.c.id == sid)).first()

    def _chain(self, conn: Connection, sid: int | None) -> list[int]:
        """Ids from ``sid`` up to the base layer (nearest first)."""
        ids: list[int] = []
        while sid is not None:
            ids.append(sid)
            sid = conn.execute(select(T.c.parent_id).where(T.c.id == sid)).scalar_one()
        return ids

    def _info(self, conn: Connection, row: Any, parent_key: str | None = None) -> Info:
        if parent_key is None:
            parent = self._by_id(conn, row.parent_id)
            parent_key = parent.key if parent is not None else ""
        return Info(kind=row.kind, name=row.key, parent=parent_key, labels=json.loads(row.labels),
                    created_at=row.created_at, updated_at=row.updated_at, leases=json.loads(row.leases))

    def _tmpdir(self, sn: str) -> Path:
        path = self.root / sn / (_TMP + uuid.uuid4().hex)
        with self._lock:
            self._building.add(path.name)
        return path

    def _done_tmp(self, path: Path) -> None:
        with self._lock:
            self._building.discard(path.name)

    # -- mounts ------------------------------------------------------------------------

    def _mounts(self, conn: Connection, sn: str, row: Any) -> list[Mount]:
        parents = self._chain(conn, row.parent_id)
        own = self.snap_dir(sn, row.id)
        if sn == "native":
            return [Mount(type="bind", source=str(own / "fs"),
                          options=["rbind", "ro" if row.kind == KIND_VIEW else "rw"])]
        if not parents:
            return [Mount(type="bind", source=str(own / "fs"),
                          options=["ro" if row.kind == KIND_VIEW else "rw", "rbind"])]
        options: list[str] = ["index=off"] if self.index_off else []
        if row.kind == KIND_ACTIVE:
            options += [f"workdir={own / 'work'}", f"upperdir={own / 'fs'}"]
        elif len(parents) == 1:
            return [Mount(type="bind", source=str(self.snap_dir(sn, parents[0]) / "fs"), options=["ro", "rbind"])]
        options.append("lowerdir=" + ":".join(str(self.snap_dir(sn, p) / "fs") for p in parents))
        return [Mount(type="overlay", source="overlay", options=options)]

    # -- prepare / view ----------------------------------------------------------------

    def create(self, ns: str, sn: str, key: str, parent: str, labels: dict[str, str], kind: str,
               lease: str = "") -> list[Mount]:
        check_snapshotter(sn)
        _check_labels(labels)
        tmp = self._tmpdir(sn)
        try:
            parent_row = None
            if parent:  # its directory is needed first; everything is checked again under the lock
                with self.reader.connect() as conn:
                    parent_row = self._check_new(conn, ns, sn, key, parent)
            # build the directory outside the transaction (a native copy may take long)
            os.mkdir(tmp)
            os.mkdir(tmp / "fs")
            if sn == "native" and parent_row is not None:
                os.rmdir(tmp / "fs")
                _copy_tree(self.snap_dir(sn, parent_row.id) / "fs", tmp / "fs")
            elif kind == KIND_ACTIVE and sn == "overlayfs":
                (tmp / "work").mkdir()
            if parent_row is not None and sn == "overlayfs":
                # containerd gives the new upper dir the parent's root owner
                st = os.stat(self.snap_dir(sn, parent_row.id) / "fs")
                os.chown(tmp / "fs", st.st_uid, st.st_gid)
            now = time.time_ns()
            with self.engine.begin() as conn:
                parent_row = self._check_new(conn, ns, sn, key, parent)
                sid = conn.execute(_INSERT, dict(
                    namespace=ns, snapshotter=sn, key=key, kind=kind,
                    parent_id=parent_row.id if parent_row is not None else None,
                    labels=json.dumps(labels), leases=json.dumps([lease] if lease else []),
                    created_at=now, updated_at=now, size=0, inodes=0)).inserted_primary_key[0]
                final = self.snap_dir(sn, sid)
                if final.exists():  # left by a killed call whose insert was rolled back
                    shutil.rmtree(final)
                os.rename(tmp, final)
                row = SimpleNamespace(id=sid, kind=kind, parent_id=parent_row.id if parent_row is not None else None)
                return self._mounts(conn, sn, row)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            self._done_tmp(tmp)

    def _check_new(self, conn: Connection, ns: str, sn: str, key: str, parent: str) -> Any:
        if self._row(conn, ns, sn, key) is not None:
            raise AlreadyExists(f'snapshot "{key}": already exists')
        return self._committed_parent(conn, ns, sn, parent, "create") if parent else None

    def _committed_parent(self, conn: Connection, ns: str, sn: str, parent: str, verb: str) -> Any:
        row = self._row(conn, ns, sn, parent)
        if row is None:
            raise NotFound(f"parent snapshot {parent} does not exist: not found")
        if row.kind != KIND_COMMITTED:
            raise InvalidArgument(f'failed to {verb} snapshot: parent "{_bkey(row)}" is not committed snapshot: '
                                  'invalid argument')
        return row

    def prepare(self, ns: str, sn: str, key: str, parent: str = "", labels: dict[str, str] | None = None,
                lease: str = "") -> list[Mount]:
        return self.create(ns, sn, key, parent, labels or {}, KIND_ACTIVE, lease)

    def view(self, ns: str, sn: str, key: str, parent: str = "", labels: dict[str, str] | None = None,
             lease: str = "") -> list[Mount]:
        return self.create(ns, sn, key, parent, labels or {}, KIND_VIEW, lease)

    def mounts(self, ns: str, sn: str, key: str) -> list[Mount]:
        check_snapshotter(sn)
        with self.reader.connect() as conn:
            row = self._existing(conn, ns, sn, key)
            if row.kind == KIND_COMMITTED:
                what = "active" if sn == "overlayfs" else "snapshot"
                raise FailedPrecondition(f"failed to get {what} mount: requested snapshot {_bkey(row)} "
                                         "not active or view: failed precondition")
            return self._mounts(conn, sn, row)

    # -- commit / remove ---------------------------------------------------------------

    def commit(self, ns: str, sn: str, name: str, key: str, labels: dict[str, str] | None = None,
               lease: str = "", parent: str = "") -> None:
        """Commit ``key`` as ``name``; with ``parent`` (overlayfs), stack an active snapshot
        prepared without a parent onto that committed one: an upper dir does not depend on
        the layers below it, so a parallel unpack applies layers apart and stacks them here."""
        check_snapshotter(sn)
        labels = labels or {}
        _check_labels(labels)
        if parent and sn != "overlayfs":
            raise InvalidArgument(f"snapshotter {sn} cannot stack a snapshot onto a parent: invalid argument")
        with self.reader.connect() as conn:  # early answer; checked again under the lock
            row, parent_row = self._check_commit(conn, ns, sn, name, key, parent)
        if parent_row is not None:
            self._check_stackable(sn, parent_row.id)
        usage = disk_usage(self.snap_dir(sn, row.id) / "fs")  # outside the write lock
        now = time.time_ns()
        with self.engine.begin() as conn:
            row, parent_row = self._check_commit(conn, ns, sn, name, key, parent)
            # one row changes key, kind and labels at once: a kill commits all or nothing
            conn.execute(_UPDATE, dict(
                sid=row.id, key=name, kind=KIND_COMMITTED, labels=json.dumps(labels),
                leases=json.dumps([lease] if lease else []), created_at=now, updated_at=now,
                size=usage.size, inodes=usage.inodes,
                parent_id=row.parent_id if parent_row is None else parent_row.id))

    def _check_commit(self, conn: Connection, ns: str, sn: str, name: str, key: str,
                      parent: str = "") -> tuple[Any, Any]:
        if self._row(conn, ns, sn, name) is not None:
            raise AlreadyExists(f'snapshot "{name}": already exists')
        row = self._existing(conn, ns, sn, key)
        if row.kind != KIND_ACTIVE:
            raise FailedPrecondition(f'failed to commit snapshot: snapshot "{_bkey(row)}" is not active: '
                                     'failed precondition')
        if not parent:
            return row, None
        if row.parent_id is not None:
            raise FailedPrecondition(f'failed to commit snapshot: snapshot "{_bkey(row)}" has a parent already: '
                                     'failed precondition')
        return row, self._committed_parent(conn, ns, sn, parent, "commit")

    def _check_stackable(self, sn: str, parent_id: int) -> None:
        """A prepare onto a parent gives the upper dir the parent's root owner, and a layer
        may or may not set it again: stacked later, the result is only known to be the same
        when that owner is the one our own directories get."""
        owner = os.stat(self.snap_dir(sn, parent_id) / "fs")
        if (owner.st_uid, owner.st_gid) != (os.geteuid(), os.getegid()):
            raise FailedPrecondition(f"parent's root is owned by {owner.st_uid}:{owner.st_gid}: "
                                     "apply the layer onto its parent instead: failed precondition")

    def remove(self, ns: str, sn: str, key: str) -> None:
        check_snapshotter(sn)
        with self.engine.begin() as conn:
            row = self._existing(conn, ns, sn, key)
            if conn.execute(_A_CHILD, {"sid": row.id}).first() is not None:
                raise FailedPrecondition("cannot remove snapshot with child: failed precondition")
            conn.execute(_DELETE, {"sid": row.id})
        # the record is gone; the directory follows (a kill here leaves an orphan for cleanup).
        # It leaves its place now and the disk after the answer: deleting a rootfs' files
        # took 2-7 ms of ctr run --rm (containerd leaves it to its collector)
        path = self.snap_dir(sn, row.id)
        trash = self._tmpdir(sn)
        try:
            os.rename(path, trash)
        except BaseException as exc:
            self._done_tmp(trash)
            if isinstance(exc, FileNotFoundError):
                return
            raise
        self._purger.run(self._purge, trash)

    def _purge(self, trash: Path) -> None:
        try:
            shutil.rmtree(trash, ignore_errors=True)
        finally:
            self._done_tmp(trash)

    # -- reads and labels --------------------------------------------------------------

    def stat(self, ns: str, sn: str, key: str) -> Info:
        check_snapshotter(sn)
        with self.reader.connect() as conn:
            row = self._existing(conn, ns, sn, key)
            return self._info(conn, row)

    def update(self, ns: str, sn: str, info: Info, paths: Sequence[str] = ()) -> Info:
        check_snapshotter(sn)
        if not info.name:
            raise InvalidArgument("invalid argument")
        with self.engine.begin() as conn:
            row = self._existing(conn, ns, sn, info.name)
            labels: dict[str, str] = json.loads(row.labels)
            if paths:
                for path in paths:
                    if path.startswith("labels."):
                        k = path[len("labels."):]
                        labels[k] = info.labels.get(k, "")
                    elif path == "labels":
                        labels = dict(info.labels)
                    else:
                        raise InvalidArgument(
                            f'cannot update "{path}" field on snapshot "{info.name}": invalid argument')
            else:
                labels = dict(info.labels)
            labels = {k: v for k, v in labels.items() if v != ""}  # an empty value removes a label
            _check_labels(labels)
            now = time.time_ns()
            conn.execute(update(T).where(T.c.id == row.id).values(labels=json.dumps(labels), updated_at=now))
            return self._info(conn, self._by_id(conn, row.id))

    def list(self, ns: str, sn: str, filter_strings: Sequence[str] = ()) -> list[Info]:
        check_snapshotter(sn)
        wanted = filters.parse(filter_strings)
        with self.reader.connect() as conn:
            rows = conn.execute(select(T).where((T.c.namespace == ns) & (T.c.snapshotter == sn))
                                .order_by(T.c.key)).all()
        keys = {r.id: r.key for r in rows}
        out = []
        for row in rows:
            info = Info(kind=row.kind, name=row.key, parent=keys.get(row.parent_id, ""),
                        labels=json.loads(row.labels), created_at=row.created_at,
                        updated_at=row.updated_at, leases=json.loads(row.leases))
            if wanted.matches(_lookup(info)):
                out.append(info)
        return out

    def usage(self, ns: str, sn: str, key: str) -> Usage:
        check_snapshotter(sn)
        with self.reader.connect() as conn:
            row = self._existing(conn, ns, sn, key)
        if row.kind == KIND_COMMITTED:
            return Usage(size=row.size, inodes=row.inodes)
        return disk_usage(self.snap_dir(sn, row.id) / "fs")

    def namespace_held(self, ns: str) -> list[str]:
        with self.reader.connect() as conn:
            return sorted(r[0] for r in conn.execute(
                select(T.c.snapshotter).where(T.c.namespace == ns).distinct()))

    def cleanup(self, sn: str) -> list[str]:
        """Remove directories that no record names (left by killed calls); returns them.
        Removals under way finish first: what Cleanup returns, the disk has back."""
        check_snapshotter(sn)
        self.wait_purged()
        base = self.root / sn
        with self.engine.connect() as conn:
            known = {str(r[0]) for r in conn.execute(select(T.c.id).where(T.c.snapshotter == sn))}
        with self._lock:
            busy = set(self._building)
        removed = []
        for entry in os.listdir(base):
            if entry in known or entry in busy:
                continue
            if entry.isdigit() or entry.startswith(_TMP):
                # a directory renamed into place by a call still inside its transaction has a
                # record by then; recheck under the write lock before deleting it
                with self.engine.begin() as conn:
                    if entry.isdigit() and conn.execute(select(func.count()).select_from(T).where(
                            T.c.id == int(entry))).scalar_one():
                        continue
                    shutil.rmtree(base / entry, ignore_errors=True)
                removed.append(entry)
        return removed


def _bkey(row: Any) -> str:
    """containerd's backend name of a snapshot, which its messages show: <ns>/<id>/<key>."""
    return f"{row.namespace}/{row.id}/{row.key}"


def _lookup(info: Info) -> filters.Lookup:
    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        head = path[0]
        if head == "kind":
            return info.kind, True
        if head == "name":
            return info.name, True
        if head == "parent":
            return info.parent, True
        if head == "labels":
            key = ".".join(path[1:])
            if not info.labels or key not in info.labels:
                return "", False
            return info.labels[key], True
        return "", False
    return lookup


def _copy_tree(src: Path, dst: Path) -> None:
    """The native snapshotter's copy: everything kept (owners, modes, times, xattrs, links)."""
    res = subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(f"copy {src}: {res.stderr.strip()}")
