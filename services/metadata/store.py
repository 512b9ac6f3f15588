"""The metadata store's logic, with containerd's rules and messages; no NATS here.

Methods are synchronous (SQLAlchemy); the server runs them in a thread.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from flotilla.libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flotilla.libs.identifiers import validate_identifier

from . import containers, db, images
from .api import Namespace
from .common import check_labels, encode_unlisted, has_unlisted, refuse_consumer_namespace
from .containers import ContainersMixin
from .gcmark import GCMixin
from .images import ImagesMixin
from .integrity import IntegrityMixin
from .leases import LeasesMixin


# built once: statement construction costs more than running them on a small table
_LIST_NAMESPACES = (select(db.namespaces.c.name, db.namespace_labels.c.key, db.namespace_labels.c.value)
                    .select_from(db.namespaces.outerjoin(db.namespace_labels))
                    .order_by(db.namespaces.c.name))
_NAMESPACE_LABELS = select(db.namespace_labels.c.key, db.namespace_labels.c.value).where(
    db.namespace_labels.c.namespace == bindparam("name"))


class MetadataStore(ContainersMixin, ImagesMixin, LeasesMixin, GCMixin, IntegrityMixin):
    @classmethod
    def open(cls, url: str, host: str = "") -> "MetadataStore":
        """``host``: this metadata instance's (cfg.host_id, "" on a single host), the owner
        of containers asked for with no host."""
        store = cls(db.open_engine(url, host), host)
        store.encode_unlisted()
        return store

    def encode_unlisted(self) -> None:
        """Encode the records written before the ``listed`` column, or by an older version
        (a list still answers for those, one record at a time)."""
        encoders = ((db.images, images.row_listed), (db.containers, containers.row_listed))
        with self._read() as conn:
            if not any(has_unlisted(conn, table) for table, _ in encoders):
                return
        with self._write() as conn:
            for table, encode in encoders:
                encode_unlisted(conn, table, encode)

    # -- namespaces --------------------------------------------------------------------

    def _labels(self, conn: Connection, name: str) -> dict[str, str]:
        return {k: v for k, v in conn.execute(_NAMESPACE_LABELS, {"name": name})}

    def _set_label(self, conn: Connection, name: str, key: str, value: str) -> None:
        check_labels({key: value}, "namespace.Labels")
        conn.execute(delete(db.namespace_labels).where(
            (db.namespace_labels.c.namespace == name) & (db.namespace_labels.c.key == key)))
        if value:
            conn.execute(insert(db.namespace_labels).values(namespace=name, key=key, value=value))

    def get_namespace(self, name: str) -> Namespace:
        # containerd answers Get of an unknown namespace with empty labels, not NotFound
        with self._read() as conn:
            return Namespace(name=name, labels=self._labels(conn, name))

    def list_namespaces(self) -> list[Namespace]:
        labels: dict[str, dict[str, str]] = {}
        with self._read() as conn:
            for name, key, value in conn.execute(_LIST_NAMESPACES):
                found = labels.setdefault(name, {})
                if key is not None:
                    found[key] = value
        return [Namespace(name=n, labels=ls) for n, ls in labels.items()]

    def create_namespace(self, ns: Namespace) -> Namespace:
        validate_identifier(ns.name)
        refuse_consumer_namespace(ns.name)
        check_labels(ns.labels, "namespace.Labels")
        try:
            with self._write() as conn:
                conn.execute(insert(db.namespaces).values(name=ns.name))
                for key, value in ns.labels.items():
                    self._set_label(conn, ns.name, key, value)
        except IntegrityError:
            raise AlreadyExists(f'namespace "{ns.name}": already exists') from None
        return ns

    def update_namespace(self, ns: Namespace, paths: list[str]) -> Namespace:
        with self._write() as conn:
            self._ensure_namespace(conn, ns.name)
            if paths:
                for path in paths:
                    if not path.startswith("labels."):
                        raise InvalidArgument(f'cannot update "{path}" field')
                    key = path[len("labels."):]
                    self._set_label(conn, ns.name, key, ns.labels.get(key, ""))
            else:
                conn.execute(delete(db.namespace_labels).where(db.namespace_labels.c.namespace == ns.name))
                for key, value in ns.labels.items():
                    self._set_label(conn, ns.name, key, value)
            return Namespace(name=ns.name, labels=self._labels(conn, ns.name))

    def delete_namespace(self, name: str, also_held: list[str] | None = None, *, blobs: bool = False,
                         snapshotters: list[str] | None = None) -> None:
        """Delete an empty namespace. ``blobs`` and ``snapshotters`` say what the content and
        snapshots services still hold in it; ``also_held`` names anything else."""
        with self._write() as conn:
            held: list[str] = []
            # containerd's order: images, blobs, containers, snapshots per snapshotter
            if conn.execute(select(db.images.c.name).where(db.images.c.namespace == name).limit(1)).first():
                held.append("images")
            if blobs:
                held.append("blobs")
            # any host's: the namespace is the farm's
            if conn.execute(select(db.containers.c.id).where(db.containers.c.namespace == name).limit(1)).first():
                held.append("containers")
            held += [f'snapshots on "{s}" snapshotter' for s in sorted(snapshotters or [])]
            held += list(also_held or [])
            if held:
                raise FailedPrecondition(
                    f'namespace "{name}" must be empty, but it still has {", ".join(held)}: failed precondition')
            # leases go with their namespace, as in containerd
            conn.execute(delete(db.lease_resources).where(db.lease_resources.c.namespace == name))
            conn.execute(delete(db.leases).where(db.leases.c.namespace == name))
            conn.execute(delete(db.namespace_labels).where(db.namespace_labels.c.namespace == name))
            if conn.execute(delete(db.namespaces).where(db.namespaces.c.name == name)).rowcount == 0:
                raise NotFound(f'namespace "{name}": not found')
