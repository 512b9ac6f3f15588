"""Image records with containerd's validation, field masks and messages."""

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

from . import db
from .api import Descriptor, Image
from .common import StoreBase, encoded_page, page, parse_filters, check_labels, digest_error, dump_map, kept, load_map
from .containers import map_lookup

_T = db.images
# built once: composing a statement per call costs more than the lookup
_GET = select(_T).where((_T.c.namespace == bindparam("namespace")) & (_T.c.name == bindparam("name")))
_INSERT = insert(_T)


def _row_to_image(row: Row[Any]) -> Image:
    return Image(name=row.name, labels=load_map(row.labels),
                 target=Descriptor(row.media_type, row.digest, row.size, load_map(row.annotations)),
                 created_at=row.created_at, updated_at=row.updated_at)


# what a list reads of each image, in this order (row_to_wire unpacks it); an unfiltered
# encoded list reads only the key and the encoding
LIST_COLUMNS = (_T.c.name, _T.c.labels, _T.c.media_type, _T.c.digest, _T.c.size, _T.c.annotations,
                _T.c.created_at, _T.c.updated_at)
ENCODED_COLUMNS = (_T.c.name, _T.c.listed)


def row_to_wire(row: Row[Any]) -> dict[str, Any]:
    """An image as its wire map, straight from a row of LIST_COLUMNS: lists skip the
    dataclasses, and unpacking the row costs a third of reading it by names."""
    name, labels, media_type, digest, size, annotations, created_at, updated_at = row
    return {"name": name, "labels": load_map(labels),
            "target": {"media_type": media_type, "digest": digest, "size": size,
                       "annotations": load_map(annotations)},
            "created_at": created_at, "updated_at": updated_at}


def row_listed(row: Row[Any]) -> bytes:
    """A whole row's list entry (for a row without it)."""
    return listed.image(_row_to_image(row))


def wire_lookup(i: dict[str, Any]) -> filters.Lookup:
    t = i["target"]

    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        head = path[0]
        if head == "name":
            return i["name"], bool(i["name"])
        if head == "target":
            if len(path) < 2:
                return "", False
            key = {"digest": "digest", "mediatype": "media_type"}.get(path[1])
            return (t[key], bool(t[key])) if key else ("", False)
        if head == "labels":
            return map_lookup(i["labels"], path[1:])
        if head == "annotations":
            return map_lookup(t["annotations"], path[1:])
        return "", False
    return lookup


def _values(i: Image) -> dict[str, Any]:
    return dict(labels=dump_map(i.labels), media_type=i.target.media_type, digest=i.target.digest,
                size=i.target.size, annotations=dump_map(i.target.annotations),
                created_at=i.created_at, updated_at=i.updated_at, listed=listed.image(i))


def validate_image(i: Image) -> None:
    if not i.name:
        raise InvalidArgument("image name must not be empty: invalid argument")
    check_labels(i.labels, "image.Labels")
    err = digest_error(i.target.digest)
    if err:
        raise InvalidArgument(f'Target.Digest "{i.target.digest}" invalid: {err}: invalid argument')
    if i.target.size <= 0:
        raise InvalidArgument("Target.Size must be greater than zero: invalid argument")
    if i.target.size >= 1 << 63:  # containerd's size is an int64, and so is the database's column
        raise InvalidArgument(f"Target.Size {i.target.size} overflows an int64: invalid argument")
    if not i.target.media_type:
        raise InvalidArgument("Target.MediaType must be set: invalid argument")


def image_lookup(i: Image) -> filters.Lookup:
    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        head = path[0]
        if head == "name":
            return i.name, bool(i.name)
        if head == "target":
            if len(path) < 2:
                return "", False
            if path[1] == "digest":
                return i.target.digest, bool(i.target.digest)
            if path[1] == "mediatype":
                return i.target.media_type, bool(i.target.media_type)
            return "", False
        if head == "labels":
            return map_lookup(i.labels, path[1:])
        if head == "annotations":
            return map_lookup(i.target.annotations, path[1:])
        return "", False
    return lookup


def _normalise(i: Image) -> None:
    i.labels = kept(i.labels)
    i.target.annotations = kept(i.target.annotations)


class ImagesMixin(StoreBase):
    def get_image(self, namespace: str, name: str) -> Image:
        with self._read() as conn:
            return self._get_image(conn, namespace, name)

    def _get_image(self, conn: Connection, namespace: str, name: str) -> Image:
        row = conn.execute(_GET, {"namespace": namespace, "name": name}).first()
        if row is None:
            raise NotFound(f'image "{name}": not found')
        return _row_to_image(row)

    def list_images(self, namespace: str, fs: list[str] | None = None) -> list[Image]:
        with self._read() as conn:
            rows = conn.execute(select(_T).where(_T.c.namespace == namespace).order_by(_T.c.name)).all()
        wanted = parse_filters(fs)
        return [i for i in map(_row_to_image, rows) if wanted.matches(image_lookup(i))]

    def list_images_page(self, namespace: str, fs: list[str] | None = None, after: str = "",
                         budget: int = 0, encoded: bool = False) -> tuple[list[Any], str]:
        """Wire maps of the matching images, a page of about ``budget`` bytes; ``encoded``:
        their list entries instead (libs/api/listed.py)."""
        wanted = parse_filters(fs)
        with self._read() as conn:
            if encoded and not wanted.any_of:
                rows, after = encoded_page(conn, _T.c.name, ENCODED_COLUMNS, namespace, after, budget)
                # (none: a row an older version wrote)
                return [entry or listed.image(self._get_image(conn, namespace, name)) for name, entry in rows], after
            # filtered: each row decoded to be matched; into maps for a page of them, into
            # records for their entries
            decode, lookup = (_row_to_image, image_lookup) if encoded else (row_to_wire, wire_lookup)
            found, after = page(conn, _T, _T.c.name, namespace, after, budget, decode, wanted, lookup,
                                lambda r: 200 + len(r[0]) + len(r[1]) + len(r[3]) + len(r[5]), columns=LIST_COLUMNS)
        return ([listed.image(i) for i in found] if encoded else found), after

    def create_image(self, namespace: str, i: Image) -> Image:
        if not i.name:  # the service's own check comes before the store's
            raise InvalidArgument("Image.Name required")
        validate_image(i)
        i.created_at = i.updated_at = time.time_ns()
        _normalise(i)
        try:
            with self._write() as conn:
                self._ensure_namespace(conn, namespace)
                conn.execute(_INSERT, dict(namespace=namespace, name=i.name, **_values(i)))
        except IntegrityError:
            raise AlreadyExists(f'image "{i.name}": already exists') from None
        return i

    def update_image(self, namespace: str, i: Image, paths: list[str]) -> Image:
        if not i.name:
            raise InvalidArgument("Image.Name required")
        with self._write() as conn:
            row = conn.execute(select(_T).where((_T.c.namespace == namespace) & (_T.c.name == i.name))
                               .with_for_update()).first()
            if row is None:
                raise NotFound(f'image "{i.name}": not found')
            updated = _row_to_image(row)
            created = updated.created_at
            if paths:
                for path in paths:
                    if path.startswith("labels."):
                        key = path[len("labels."):]
                        updated.labels[key] = i.labels.get(key, "")
                    elif path.startswith("annotations."):
                        key = path[len("annotations."):]
                        updated.target.annotations[key] = i.target.annotations.get(key, "")
                    elif path == "labels":
                        updated.labels = dict(i.labels)
                    elif path == "target":
                        updated.target = i.target  # replaced as a unit, as containerd does
                    elif path == "annotations":
                        updated.target.annotations = dict(i.target.annotations)
                    else:
                        raise InvalidArgument(f'cannot update "{path}" field on image "{i.name}": invalid argument')
            else:
                updated = Image(i.name, dict(i.labels), i.target)
            validate_image(updated)
            updated.created_at, updated.updated_at = created, time.time_ns()
            _normalise(updated)
            conn.execute(update(_T).where((_T.c.namespace == namespace) & (_T.c.name == i.name))
                         .values(**_values(updated)))
        return updated

    def delete_image(self, namespace: str, name: str) -> None:
        with self._write() as conn:
            if conn.execute(delete(_T).where((_T.c.namespace == namespace) & (_T.c.name == name))).rowcount == 0:
                raise NotFound(f'image "{name}": not found')
