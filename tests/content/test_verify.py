"""`flotilla content verify` finds corrupted, orphaned and missing blobs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from flotilla.libs.api.content import WriterOpen
from flotilla.services.content.store import ContentStore


def _put(store: ContentStore, ns: str, ref: str, data: bytes) -> str:
    s = store.open_writer(WriterOpen(ns, ref, local=False))
    store.w_write(s.session, 0, data)
    return store.w_commit(s.session, len(data), "", {}).digest


def _verify(root: Path) -> tuple[int, dict[str, list[str]]]:
    res = subprocess.run([sys.executable, "-m", "flotilla.cli", "content", "verify", "--root", str(root), "--json"],
                         capture_output=True, text=True)
    return res.returncode, json.loads(res.stdout)


def test_verify_reports_each_kind(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    good = _put(store, "a", "g", b"good")
    bad = _put(store, "a", "b", b"will rot")
    gone = _put(store, "b", "m", b"will vanish")
    assert _verify(tmp_path) == (0, {"corrupted": [], "orphaned": [], "missing": []})
    store.blob_path(bad).write_bytes(b"will ROT")           # same size, other bytes
    store.blob_path(gone).unlink()
    orphan = "sha256:" + hashlib.sha256(b"nobody's").hexdigest()
    store.blob_path(orphan).write_bytes(b"nobody's")
    code, report = _verify(tmp_path)
    assert code == 1
    assert report == {"corrupted": [bad], "orphaned": [orphan], "missing": [gone]}
    assert good not in sum(report.values(), [])
    store.close()
