"""The metadata store's logic, with containerd's rules and messages; no NATS here.

Methods are synchronous (SQLAlchemy); the server runs them in a thread.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from flotilla.libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flotilla.libs.identifiers import validate_identifier, validate_labels

from . import db
from .api import Namespace
from .containers import ContainersMixin
from .gcmark import GCMixin
from .images import ImagesMixin
from .integrity import IntegrityMixin
from .leases import LeasesMixin


def _validate_labels(labels: dict[str, str], what: str) -> None:
    try:
        validate_labels(labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc.message}") from None


class MetadataStore(ContainersMixin, ImagesMixin, LeasesMixin, GCMixin, IntegrityMixin):
    @classmethod
    def open(cls, url: str) -> "MetadataStore":
        return cls(db.open_engine(url))

    # -- namespaces --------------------------------------------------------------------

    def _labels(self, conn: Connection, name: str) -> dict[str, str]:
        rows = conn.execute(select(db.namespace_labels.c.key, db.namespace_labels.c.value)
                            .where(db.namespace_labels.c.namespace == name))
        return {k: v for k, v in rows}

    def _ensure(self, conn: Connection, name: str) -> None:
        """containerd creates a namespace on first write into it."""
        if conn.execute(select(db.namespaces.c.name).where(db.namespaces.c.name == name)).first() is None:
            conn.execute(insert(db.namespaces).values(name=name))

    def _set_label(self, conn: Connection, name: str, key: str, value: str) -> None:
        _validate_labels({key: value}, "namespace.Labels")
        conn.execute(delete(db.namespace_labels).where(
            (db.namespace_labels.c.namespace == name) & (db.namespace_labels.c.key == key)))
        if value:
            conn.execute(insert(db.namespace_labels).values(namespace=name, key=key, value=value))

    def get_namespace(self, name: str) -> Namespace:
        # containerd answers Get of an unknown namespace with empty labels, not NotFound
        with self.engine.connect() as conn:
            return Namespace(name=name, labels=self._labels(conn, name))

    def list_namespaces(self) -> list[Namespace]:
        with self.engine.connect() as conn:
            names = [r[0] for r in conn.execute(select(db.namespaces.c.name).order_by(db.namespaces.c.name))]
            labels: dict[str, dict[str, str]] = {n: {} for n in names}
            for ns, key, value in conn.execute(select(db.namespace_labels)):
                labels.setdefault(ns, {})[key] = value
            return [Namespace(name=n, labels=labels[n]) for n in names]

    def create_namespace(self, ns: Namespace) -> Namespace:
        validate_identifier(ns.name)
        _validate_labels(ns.labels, "namespace.Labels")
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
            self._ensure(conn, ns.name)
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
