"""``flotilla content verify``: find corrupted, orphaned and missing blobs in a store.

Safe while the service runs: it only reads (blob files and the ownership records).
"""

from __future__ import annotations

import json
from pathlib import Path

from .store import ContentStore


def verify(root: Path, rehash: bool = True) -> dict[str, list[str]]:
    if not (root / "content" / "owners.db").exists():
        raise FileNotFoundError(f"no content store under {root}")
    store = ContentStore(root)
    try:
        return store.verify(rehash)
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
