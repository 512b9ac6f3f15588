"""Container records with containerd's validation, field masks and messages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from flotilla.libs import filters
from flotilla.libs.api import listed
from flotilla.libs.errors import AlreadyExists, InvalidArgument, NotFound
from flotilla.libs.identifiers import validate_identifier

from . import db
from .api import AnyValue, Container, Runtime
from .common import StoreBase, encoded_page, page, parse_filters, check_labels, dump_map, kept, load_map, pack, unpack

_T = db.containers
# built once: composing a statement per call costs more than the lookup
_KEY = ((_T.c.namespace == bindparam("namespace")) & (_T.c.host == bindparam("host"))
        & (_T.c.id == bindparam("id")))
_GET = select(_T).where(_KEY)
_GET_FOR_UPDATE = _GET.with_for_update()
_INSERT = insert(_T)
_DELETE = delete(_T).where(_KEY)
# the fields a full replace (no field mask) may change
_REPLACEABLE = ("labels", "spec", "extensions", "image", "snapshotkey")


def _any_to_db(value: AnyValue | None) -> bytes | None:
    return None if value is None else pack([value.type_url, value.value])


def _any_from_db(data: bytes | None) -> AnyValue | None:
    if data is None:
        return None
    type_url, value = unpack(data)
    return AnyValue(type_url, value)


def _row_to_container(row: Row[Any]) -> Container:
    return Container(
        id=row.id, labels=load_map(row.labels), image=row.image,
        runtime=Runtime(row.runtime_name, _any_from_db(row.runtime_options)),
        spec=_any_from_db(row.spec), snapshotter=row.snapshotter, snapshot_key=row.snapshot_key,
        created_at=row.created_at, updated_at=row.updated_at,
        extensions={k: AnyValue(t, v) for k, (t, v) in unpack(row.extensions).items()},
    )


def _any_wire(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    type_url, value = unpack(data)
    return {"type_url": type_url, "value": value}


# what a list reads of each container, in this order (row_to_wire unpacks it)
LIST_COLUMNS = (_T.c.id, _T.c.labels, _T.c.image, _T.c.runtime_name, _T.c.runtime_options, _T.c.spec,
                _T.c.snapshotter, _T.c.snapshot_key, _T.c.created_at, _T.c.updated_at, _T.c.extensions)
# what an unfiltered encoded list reads: the key, the spec (kept once, in its column), the encoding
ENCODED_COLUMNS = (_T.c.id, _T.c.spec, _T.c.listed)


def row_to_wire(row: Row[Any]) -> dict[str, Any]:
    """A container as its wire map, straight from a row of LIST_COLUMNS: lists skip the
    dataclasses, and unpacking the row costs a third of reading it by names."""
    id, labels, image, runtime_name, runtime_options, spec, snapshotter, snapshot_key, created_at, updated_at, \
        extensions = row
    return {
        "id": id, "labels": load_map(labels), "image": image,
        "runtime": {"name": runtime_name, "options": _any_wire(runtime_options)},
        "spec": _any_wire(spec), "snapshotter": snapshotter, "snapshot_key": snapshot_key,
        "created_at": created_at, "updated_at": updated_at,
        "extensions": {k: {"type_url": t, "value": v} for k, (t, v) in unpack(extensions).items()} if extensions
        else {},
    }


def row_listed(row: Row[Any]) -> bytes:
    """A whole row's encoding but its spec (for a row without it)."""
    return listed.container_without_spec(_row_to_container(row))


def _entry(without_spec: bytes, spec: bytes | None) -> bytes:
    """A container's list entry: its encoding but the spec, and its spec column's value."""
    return listed.container_entry(without_spec, *unpack(spec)) if spec is not None else \
        listed.container_entry(without_spec, None, b"")


def wire_lookup(c: dict[str, Any]) -> filters.Lookup:
    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        head = path[0]
        if head in ("id", "image"):
            return c[head], bool(c[head])
        if head == "runtime":
            if len(path) > 1 and path[1] == "name":
                return c["runtime"]["name"], bool(c["runtime"]["name"])
            return "", False
        if head == "labels":
            return map_lookup(c["labels"], path[1:])
        return "", False
    return lookup


def _row_size(row: Row[Any]) -> int:
    """About a LIST_COLUMNS row's size on the wire."""
    return 200 + len(row[1]) + len(row[2]) + len(row[4] or b"") + len(row[5] or b"") + len(row[7]) \
        + len(row[10] or b"")


def _values(c: Container) -> dict[str, Any]:
    return dict(labels=dump_map(c.labels), image=c.image, runtime_name=c.runtime.name,
                runtime_options=_any_to_db(c.runtime.options), spec=_any_to_db(c.spec),
                snapshotter=c.snapshotter, snapshot_key=c.snapshot_key,
                extensions=pack({k: [v.type_url, v.value] for k, v in c.extensions.items()}),
                created_at=c.created_at, updated_at=c.updated_at, listed=listed.container_without_spec(c))


def validate_container(c: Container) -> None:
    """containerd's validateContainer; the message lacks the caller's prefix."""
    try:
        validate_identifier(c.id)
    except InvalidArgument as exc:
        raise InvalidArgument(f"container.ID: {exc.message}") from None
    if any(k == "" for k in c.extensions):
        raise InvalidArgument("container.Extension keys must not be zero-length: invalid argument")
    check_labels(c.labels, "containers.Labels")
    if not c.runtime.name:
        raise InvalidArgument("container.Runtime.Name must be set: invalid argument")
    if c.spec is None:
        raise InvalidArgument("container.Spec must be set: invalid argument")
    if c.snapshot_key and not c.snapshotter:
        raise InvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set: invalid argument")


def container_lookup(c: Container) -> filters.Lookup:
    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        head = path[0]
        if head == "id":
            return c.id, bool(c.id)
        if head == "runtime":
            if len(path) > 1 and path[1] == "name":
                return c.runtime.name, bool(c.runtime.name)
            return "", False
        if head == "image":
            return c.image, bool(c.image)
        if head == "labels":
            return map_lookup(c.labels, path[1:])
        return "", False
    return lookup


def map_lookup(m: dict[str, str], path: Sequence[str]) -> tuple[str, bool]:
    """containerd's checkMap: the rest of the path joined with dots is the key."""
    if not m:
        return "", False
    key = ".".join(path)
    return m.get(key, ""), key in m


class ContainersMixin(StoreBase):
    """Containers are host-local: each method addresses those of ``host``, "" being the
    store's own (callers of before hosts, and single-host set-ups)."""

    def get_container(self, namespace: str, id: str, host: str = "") -> Container:
        with self._read() as conn:
            return self._get_container(conn, namespace, id, host)

    def _get_container(self, conn: Connection, namespace: str, id: str, host: str) -> Container:
        row = conn.execute(_GET, {"namespace": namespace, "host": host or self.host, "id": id}).first()
        if row is None:
            raise NotFound(f'container "{id}" in namespace "{namespace}": not found')
        return _row_to_container(row)

    def list_containers(self, namespace: str, fs: list[str] | None = None, host: str = "") -> list[Container]:
        with self._read() as conn:
            rows = conn.execute(select(_T).where((_T.c.namespace == namespace) & (_T.c.host == (host or self.host)))
                                .order_by(_T.c.id)).all()
        wanted = parse_filters(fs)
        return [c for c in map(_row_to_container, rows) if wanted.matches(container_lookup(c))]

    def list_containers_page(self, namespace: str, fs: list[str] | None = None, after: str = "",
                             budget: int = 0, host: str = "", encoded: bool = False) -> tuple[list[Any], str]:
        """Wire maps of the matching containers, a page of about ``budget`` bytes;
        ``encoded``: their list entries instead (libs/api/listed.py)."""
        wanted = parse_filters(fs)
        scope = _T.c.host == (host or self.host)
        with self._read() as conn:
            if encoded and not wanted.any_of:
                rows, after = encoded_page(conn, _T.c.id, ENCODED_COLUMNS, namespace, after, budget, scope)
                return [_entry(without_spec or listed.container_without_spec(  # (none: an older version's row)
                    self._get_container(conn, namespace, id, host)), spec) for id, spec, without_spec in rows], after
            # filtered: each row decoded to be matched; into maps for a page of them, into
            # records for their entries
            decode, lookup = (_row_to_container, container_lookup) if encoded else (row_to_wire, wire_lookup)
            found, after = page(conn, _T, _T.c.id, namespace, after, budget, decode, wanted, lookup,
                                _row_size, scope, LIST_COLUMNS)
        return ([listed.container(c) for c in found] if encoded else found), after

    def create_container(self, namespace: str, c: Container, host: str = "") -> Container:
        try:
            validate_container(c)
        except InvalidArgument as exc:
            raise InvalidArgument(f"create container failed validation: {exc.message}") from None
        c.created_at = c.updated_at = time.time_ns()
        c.labels = kept(c.labels)
        try:
            with self._write() as conn:
                self._ensure_namespace(conn, namespace)
                conn.execute(_INSERT, dict(namespace=namespace, host=host or self.host, id=c.id, **_values(c)))
        except IntegrityError:
            raise AlreadyExists(f'container "{c.id}": already exists') from None
        return c

    def update_container(self, namespace: str, c: Container, paths: list[str], host: str = "") -> Container:
        if not c.id:
            raise InvalidArgument("must specify a container id: invalid argument")
        ref = {"namespace": namespace, "host": host or self.host, "id": c.id}
        with self._write() as conn:
            row = conn.execute(_GET_FOR_UPDATE, ref).first()
            if row is None:
                raise NotFound(f'container "{c.id}": not found')
            updated = _row_to_container(row)
            if not paths:
                paths = list(_REPLACEABLE)
                # immutable fields must not differ on a full replace
                if updated.snapshotter != c.snapshotter:
                    raise InvalidArgument("container.Snapshotter field is immutable: invalid argument")
                if updated.runtime.name != c.runtime.name:
                    raise InvalidArgument("container.Runtime.Name field is immutable: invalid argument")
            for path in paths:
                if path.startswith("labels."):
                    key = path[len("labels."):]
                    # containerd stores the given value; an empty one removes the label
                    _set_or_drop(updated.labels, key, c.labels.get(key, ""))
                elif path.startswith("extensions."):
                    key = path[len("extensions."):]
                    if key in c.extensions:
                        updated.extensions[key] = c.extensions[key]
                    else:
                        updated.extensions.pop(key, None)
                elif path == "labels":
                    updated.labels = dict(c.labels)
                elif path == "spec":
                    updated.spec = c.spec
                elif path == "extensions":
                    updated.extensions = dict(c.extensions)
                elif path == "image":
                    updated.image = c.image
                elif path == "snapshotkey":
                    updated.snapshot_key = c.snapshot_key
                else:
                    raise InvalidArgument(f'cannot update "{path}" field on "{c.id}": invalid argument')
            try:
                validate_container(updated)
            except InvalidArgument as exc:
                raise InvalidArgument(f"update failed validation: {exc.message}") from None
            updated.updated_at = time.time_ns()
            updated.labels = kept(updated.labels)
            conn.execute(update(_T).where((_T.c.namespace == namespace) & (_T.c.host == ref["host"])
                                          & (_T.c.id == c.id)).values(**_values(updated)))
        return updated

    def delete_container(self, namespace: str, id: str, host: str = "") -> None:
        with self._write() as conn:
            if conn.execute(_DELETE, {"namespace": namespace, "host": host or self.host, "id": id}).rowcount == 0:
                raise NotFound(f"container {id}: not found")


def _set_or_drop(m: dict[str, str], key: str, value: str) -> None:
    """containerd's bolt store writes labels with empty values as deletions."""
    if value:
        m[key] = value
    else:
        m.pop(key, None)
