"""Leases and the resources they hold, with containerd's rules and messages."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Sequence

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from flotilla.libs import filters
from flotilla.libs.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented

from . import db
from .api import Lease, Resource
from .common import StoreBase, parse_filters, digest_error, dump_map, kept, load_map

_L, _R = db.leases, db.lease_resources
# built once (see common.py)
_INSERT = insert(_L)
_DELETE = delete(_L).where((_L.c.namespace == bindparam("namespace")) & (_L.c.id == bindparam("id")))
_DELETE_RESOURCES = delete(_R).where((_R.c.namespace == bindparam("namespace")) & (_R.c.lease == bindparam("lease")))


def random_id() -> str:
    """containerd's WithRandomID: the clock's nanoseconds and three random bytes."""
    return f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


def parse_resource(r: Resource) -> tuple[str, str]:
    """containerd's parseLeaseResource: the stored (type, id) or its error."""
    keys = r.type.split("/")
    if keys[0] in ("content", "ingests"):
        if len(keys) != 1:
            raise InvalidArgument(f"invalid resource type {r.type}: invalid argument")
        if keys[0] == "content":
            err = digest_error(r.id)
            if err:
                raise InvalidArgument(f"invalid content resource id {r.id}: {err}: invalid argument")
    elif keys[0] == "snapshots":
        if len(keys) != 2:
            raise InvalidArgument(f"invalid snapshot resource type {r.type}: invalid argument")
    else:
        raise Unimplemented(f"resource type {r.type} not supported yet: not implemented")
    return r.type, r.id


def lease_lookup(lease: Lease) -> filters.Lookup:
    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        if path[0] == "id":
            return lease.id, bool(lease.id)
        if path[0] == "labels":
            if not lease.labels:
                return "", False
            key = ".".join(path[1:])
            return lease.labels.get(key, ""), key in lease.labels
        return "", False
    return lookup


class LeasesMixin(StoreBase):
    def create_lease(self, namespace: str, lease: Lease) -> Lease:
        if not lease.id:
            lease.id = random_id()
        lease.created_at = time.time_ns()
        lease.labels = kept(lease.labels)
        try:
            with self._write() as conn:
                self._ensure_namespace(conn, namespace)
                conn.execute(_INSERT, dict(namespace=namespace, id=lease.id, labels=dump_map(lease.labels),
                                           created_at=lease.created_at))
        except IntegrityError:
            raise AlreadyExists(f'lease "{lease.id}": already exists') from None
        return lease

    def delete_lease(self, namespace: str, id: str) -> None:
        with self._write() as conn:
            conn.execute(_DELETE_RESOURCES, {"namespace": namespace, "lease": id})
            if conn.execute(_DELETE, {"namespace": namespace, "id": id}).rowcount == 0:
                raise NotFound(f'lease "{id}": not found')

    def get_lease(self, namespace: str, id: str) -> Lease:
        with self._read() as conn:
            r = conn.execute(select(_L).where((_L.c.namespace == namespace) & (_L.c.id == id))).first()
        if r is None:
            raise NotFound(f'lease "{id}": not found')
        return Lease(r.id, load_map(r.labels), r.created_at)

    def list_leases(self, namespace: str, fs: list[str] | None = None) -> list[Lease]:
        wanted = parse_filters(fs)
        with self._read() as conn:
            rows = conn.execute(select(_L).where(_L.c.namespace == namespace).order_by(_L.c.id)).all()
        out = (Lease(r.id, load_map(r.labels), r.created_at) for r in rows)
        return [lease for lease in out if wanted.matches(lease_lookup(lease))]

    def _lease_exists(self, conn: Connection, namespace: str, id: str, lock: bool = False) -> None:
        query = select(_L.c.id).where((_L.c.namespace == namespace) & (_L.c.id == id))
        if conn.execute(query.with_for_update() if lock else query).first() is None:
            raise NotFound(f'lease "{id}": not found')

    def add_lease_resource(self, namespace: str, lease: str, r: Resource) -> None:
        with self._write() as conn:
            self._lease_exists(conn, namespace, lease, lock=True)
            typ, rid = parse_resource(r)
            exists = conn.execute(select(_R.c.rid).where(
                (_R.c.namespace == namespace) & (_R.c.lease == lease) & (_R.c.type == typ) & (_R.c.rid == rid))).first()
            if exists is None:
                conn.execute(insert(_R).values(namespace=namespace, lease=lease, type=typ, rid=rid))

    def delete_lease_resource(self, namespace: str, lease: str, r: Resource) -> None:
        with self._write() as conn:
            self._lease_exists(conn, namespace, lease, lock=True)
            typ, rid = parse_resource(r)
            conn.execute(delete(_R).where(
                (_R.c.namespace == namespace) & (_R.c.lease == lease) & (_R.c.type == typ) & (_R.c.rid == rid)))

    def list_lease_resources(self, namespace: str, lease: str) -> list[Resource]:
        with self._read() as conn:
            self._lease_exists(conn, namespace, lease)
            rows = conn.execute(select(_R.c.type, _R.c.rid).where(
                (_R.c.namespace == namespace) & (_R.c.lease == lease))).all()
        # containerd lists content, then ingests, then snapshots by snapshotter
        order = {"content": 0, "ingests": 1}
        rows = sorted(rows, key=lambda r: (order.get(r.type, 2), r.type, r.rid))
        return [Resource(rid, typ) for typ, rid in rows]
