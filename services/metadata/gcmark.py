"""Garbage collection's mark phase, as containerd's metadata/gc.go does it.

Roots: images (their target and label references), containers (their snapshot and label
references; another host's container only its content references: its snapshots live on
its host, and a collector sweeps its own host's), live leases (the resources they hold and
whatever was written under them, on every host: leases are the farm's), and content or
snapshots labelled ``containerd.io/gc.root``. From content, follow
``containerd.io/gc.ref.content[./]*`` and ``containerd.io/gc.ref.snapshot.<snapshotter>``
labels; from snapshots, their parent and labels. A lease labelled ``containerd.io/gc.flat``
protects only what it names (no references followed); one whose
``containerd.io/gc.expire`` (RFC 3339) has passed protects nothing and is removed.

Everything here is pure: the store reads the records (and holds the farm's collection
lock, ``Collecting``), the server lists content and snapshots over the bus and sweeps what
is left unmarked.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select, text
from sqlalchemy.exc import SQLAlchemyError

from flotilla.libs.api.metadata import LABEL_EXPIRE

from . import db
from .common import Collecting, StoreBase, load_map

LABEL_ROOT = "containerd.io/gc.root"
LABEL_CONTENT_REF = "containerd.io/gc.ref.content"
LABEL_SNAPSHOT_REF = "containerd.io/gc.ref.snapshot."
LABEL_FLAT = "containerd.io/gc.flat"

CONTENT, SNAPSHOT = "content", "snapshot"
Node = tuple[str, str, bool]  # (kind, key, flat); a snapshot's key is "<snapshotter>/<name>"


@dataclass
class LeaseRoots:
    id: str
    flat: bool
    expired: bool
    resources: list[tuple[str, str]] = field(default_factory=list)  # (type, id)


@dataclass
class Records:
    """What the metadata store holds in one namespace, as GC needs it."""
    images: list[tuple[str, dict[str, str]]] = field(default_factory=list)        # (target digest, labels)
    containers: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (snapshotter, key, labels)
    leases: list[LeaseRoots] = field(default_factory=list)
    # other hosts' containers' labels: content is the farm's, so their content references hold
    other_hosts: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Blob:
    digest: str
    labels: dict[str, str] = field(default_factory=dict)
    leases: list[str] = field(default_factory=list)


@dataclass
class Snap:
    snapshotter: str
    name: str
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    leases: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.snapshotter}/{self.name}"


def expired(labels: dict[str, str], now: float) -> bool:
    value = labels.get(LABEL_EXPIRE)
    if value is None:
        return False
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False  # containerd ignores an invalid expiry and keeps the lease
    if when.tzinfo is None:
        return False
    return now > when.timestamp()


def label_refs(labels: dict[str, str]) -> list[Node]:
    """containerd's sendLabelRefs."""
    out: list[Node] = []
    for k, v in sorted(labels.items()):
        if k.startswith(LABEL_CONTENT_REF):
            rest = k[len(LABEL_CONTENT_REF):]
            if rest == "" or rest[0] in "./":
                out.append((CONTENT, v, False))
        elif k.startswith(LABEL_SNAPSHOT_REF):
            snapshotter = k[len(LABEL_SNAPSHOT_REF):].split("/", 1)[0]
            out.append((SNAPSHOT, f"{snapshotter}/{v}", False))
    return out


def mark(records: Records, blobs: list[Blob], snaps: list[Snap]) -> tuple[set[str], set[str]]:
    """The content digests and snapshot keys ("<snapshotter>/<name>") reachable from roots."""
    by_digest = {b.digest: b for b in blobs}
    by_key = {s.key: s for s in snaps}
    live = {lease.id: lease for lease in records.leases if not lease.expired}
    roots: list[Node] = []
    for lease in live.values():
        for typ, rid in lease.resources:
            if typ == "content":
                roots.append((CONTENT, rid, lease.flat))
            elif typ.startswith("snapshots/"):
                roots.append((SNAPSHOT, f"{typ[len('snapshots/'):]}/{rid}", lease.flat))
    # what was written under a live lease is held by it, as if added as a resource
    for b in blobs:
        holders = [live[i] for i in b.leases if i in live]
        if holders:
            roots.append((CONTENT, b.digest, all(h.flat for h in holders)))
        if LABEL_ROOT in b.labels:
            roots.append((CONTENT, b.digest, False))
    for s in snaps:
        holders = [live[i] for i in s.leases if i in live]
        if holders:
            roots.append((SNAPSHOT, s.key, all(h.flat for h in holders)))
        if LABEL_ROOT in s.labels:
            roots.append((SNAPSHOT, s.key, False))
    for digest, labels in records.images:
        roots.append((CONTENT, digest, False))
        roots.extend(label_refs(labels))
    for snapshotter, key, labels in records.containers:
        if snapshotter:
            roots.append((SNAPSHOT, f"{snapshotter}/{key}", False))
        roots.extend(label_refs(labels))
    for labels in records.other_hosts:
        roots.extend(node for node in label_refs(labels) if node[0] == CONTENT)

    content: set[str] = set()
    snapshots: set[str] = set()
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        kind, key, flat = node
        if kind == CONTENT:
            content.add(key)
            blob = by_digest.get(key)
            if blob is not None and not flat:  # flat content follows no references
                stack.extend(label_refs(blob.labels))
        else:
            snapshots.add(key)
            snap = by_key.get(key)
            if snap is None:
                continue  # a dead edge
            if snap.parent:
                stack.append((SNAPSHOT, f"{snap.snapshotter}/{snap.parent}", flat))
            if not flat:
                stack.extend(label_refs(snap.labels))
    return content, snapshots


def removal_order(snaps: list[Snap], keep: set[str]) -> list[Snap]:
    """The unmarked snapshots, children before their parents."""
    by_key = {s.key: s for s in snaps}

    def depth(s: Snap) -> int:
        d, seen = 0, set()
        while s.parent and f"{s.snapshotter}/{s.parent}" in by_key and s.key not in seen:
            seen.add(s.key)
            s = by_key[f"{s.snapshotter}/{s.parent}"]
            d += 1
        return d
    doomed = [s for s in snaps if s.key not in keep]
    return sorted(doomed, key=depth, reverse=True)


_GC_LOCK = text("SELECT pg_advisory_lock(:key)").bindparams(key=db.GC_LOCK)
_GC_UNLOCK = text("SELECT pg_advisory_unlock(:key)").bindparams(key=db.GC_LOCK)


class GCMixin(StoreBase):
    def gc_acquire(self) -> Collecting:
        """Wait until no other collection runs anywhere in the farm and no write is in
        progress (writes hold the lock shared), then hold it until ``gc_release``."""
        if self.sqlite:
            return Collecting(lock_fd=self._gc_flock(fcntl.LOCK_EX))  # once no write of any process runs
        conn = self.engine.connect()
        try:
            conn.execute(_GC_LOCK)
            conn.commit()  # the lock is the session's: no transaction stays open meanwhile
        except BaseException:
            conn.invalidate()  # its session, and whatever it got, ends with it
            conn.close()
            raise
        return Collecting(conn)

    def gc_release(self, held: Collecting) -> None:
        if held.lock_fd >= 0:
            os.close(held.lock_fd)  # the flock goes with it
        if held.conn is None:
            return
        try:
            held.conn.execute(_GC_UNLOCK)
            held.conn.commit()
        except SQLAlchemyError:
            held.conn.invalidate()  # closing the session gives the lock back
        finally:
            held.conn.close()

    def gc_namespaces(self) -> list[str]:
        with self._read() as conn:
            return [r[0] for r in conn.execute(select(db.namespaces.c.name).order_by(db.namespaces.c.name))]

    def gc_records(self, namespace: str, now: float | None = None, *, host: str = "") -> Records:
        """``host``: whose containers hold snapshots ("" the store's own)."""
        now = time.time() if now is None else now
        host = host or self.host
        out = Records()
        with self._read() as conn:
            for digest, labels in conn.execute(select(db.images.c.digest, db.images.c.labels)
                                               .where(db.images.c.namespace == namespace)):
                out.images.append((digest, load_map(labels)))
            c = db.containers.c
            for owner, snapshotter, key, labels in conn.execute(
                    select(c.host, c.snapshotter, c.snapshot_key, c.labels).where(c.namespace == namespace)):
                if owner == host:
                    out.containers.append((snapshotter, key, load_map(labels)))
                else:
                    out.other_hosts.append(load_map(labels))
            resources: dict[str, list[tuple[str, str]]] = {}
            r = db.lease_resources.c
            for lease, typ, rid in conn.execute(select(r.lease, r.type, r.rid).where(r.namespace == namespace)):
                resources.setdefault(lease, []).append((typ, rid))
            for lid, labels in conn.execute(select(db.leases.c.id, db.leases.c.labels)
                                            .where(db.leases.c.namespace == namespace)):
                lbl = load_map(labels)
                out.leases.append(LeaseRoots(lid, LABEL_FLAT in lbl, expired(lbl, now), resources.get(lid, [])))
        return out

    def remove_leases(self, namespace: str, ids: list[str], held: Collecting | None = None) -> None:
        """Drop expired leases (GC's sweep of leases), within the collection ``held``."""
        if not ids:
            return
        with self._write(held) as conn:
            conn.execute(delete(db.lease_resources).where((db.lease_resources.c.namespace == namespace)
                                                          & db.lease_resources.c.lease.in_(ids)))
            conn.execute(delete(db.leases).where((db.leases.c.namespace == namespace) & db.leases.c.id.in_(ids)))
