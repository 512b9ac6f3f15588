"""``flotilla content verify``: find corrupted, orphaned and missing blobs in a store.

Safe while the service runs: on one host it only reads (blob files and the ownership
records). On a farm (``FLOTILLA_CONTENT_DB_URL``) it checks this host's copies and drops a
corrupt one: the farm's other copies serve meanwhile, and the service makes it again where
the farm needs it (docs/farm.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from flotilla.libs import config
from flotilla.libs.digests import ALGORITHMS

from . import db
from .copies import Copies
from .ingest import file_digest
from .store import ContentStore


def check(store: ContentStore, rehash: bool = True) -> dict[str, list[str]]:
    """Blobs whose bytes do not match their digest, blob files nobody owns (on a farm: no
    copy of this host's records), and records whose file is missing."""
    with store.reader.connect() as conn:
        if store.farm:
            owned = {r.digest: r.size for r in conn.execute(
                select(db.copies.c.digest, db.copies.c.size).where(db.copies.c.host == store.host))}
        else:
            owned = {r.digest: r.size for r in conn.execute(select(db.owners.c.digest, db.owners.c.size))}
    report: dict[str, list[str]] = {"corrupted": [], "orphaned": [], "missing": []}
    on_disk: set[str] = set()
    for alg in ALGORITHMS:
        d = store.blobs / alg
        if not d.is_dir():
            continue
        for p in d.iterdir():
            digest = f"{alg}:{p.name}"
            on_disk.add(digest)
            if digest not in owned:
                report["orphaned"].append(digest)
            elif p.stat().st_size != owned[digest] or (rehash and file_digest(p, owned[digest]) != digest):
                report["corrupted"].append(digest)
    report["missing"] = sorted(set(owned) - on_disk)
    for v in report.values():
        v.sort()
    return report


def verify(root: Path, rehash: bool = True) -> dict[str, list[str]]:
    cfg = config.load()
    if not cfg.content_db_url and not (root / "content" / "owners.db").exists():
        raise FileNotFoundError(f"no content store under {root}")
    store = ContentStore(root, host=cfg.host, db_url=cfg.content_db_url)
    try:
        report = check(store, rehash)
        if store.farm:  # a wrong copy is never served: it goes now, and its record with it
            copies = Copies(store, clean=False)
            for digest in report["corrupted"]:
                copies.drop(digest)
        return report
    finally:
        store.close()


def main(root: Path, rehash: bool = True, as_json: bool = False) -> int:
    """Print the report; exit status 1 when anything is wrong."""
    report = verify(root, rehash)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for kind, what in (("corrupted", "bytes do not match the digest"),
                           ("orphaned", "blob file no namespace owns"),
                           ("missing", "owned blob whose file is gone")):
            for digest in report[kind]:
                print(f"{kind}\t{digest}\t({what})")
        if not any(report.values()):
            print("content store is consistent")
    return 1 if any(report.values()) else 0
