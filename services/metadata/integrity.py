"""An integrity check of the metadata database: the engine's own check, then every record
decodes and every reference points at something that exists. Used after crashes."""

from __future__ import annotations

from sqlalchemy import select, text

from . import db
from .common import StoreBase, load_map, unpack


class IntegrityMixin(StoreBase):
    def check_integrity(self) -> list[str]:
        """Problems found; empty when the database is sound."""
        problems: list[str] = []
        with self._read() as conn:
            if self.sqlite:
                result = [r[0] for r in conn.execute(text("PRAGMA integrity_check"))]
                if result != ["ok"]:
                    problems += [f"sqlite: {r}" for r in result]
                problems += [f"foreign key: {tuple(r)}" for r in conn.execute(text("PRAGMA foreign_key_check"))]
            namespaces = {r[0] for r in conn.execute(select(db.namespaces.c.name))}
            for table, key in ((db.containers, "id"), (db.images, "name"), (db.leases, "id")):
                for row in conn.execute(select(table)):
                    where = f"{table.name} {row.namespace}/{getattr(row, key)}"
                    if row.namespace not in namespaces:
                        problems.append(f"{where}: namespace missing")
                    try:
                        load_map(row.labels)
                        if table is db.containers:
                            unpack(row.spec), unpack(row.runtime_options), dict(unpack(row.extensions))
                        if table is db.images:
                            load_map(row.annotations)
                    except Exception as exc:  # any decoding failure is corruption
                        problems.append(f"{where}: undecodable: {exc}")
            leases = {(r.namespace, r.id) for r in conn.execute(select(db.leases.c.namespace, db.leases.c.id))}
            for r in conn.execute(select(db.lease_resources)):
                if (r.namespace, r.lease) not in leases:
                    problems.append(f"lease resource {r.namespace}/{r.lease}/{r.type}/{r.rid}: lease missing")
        return problems
