"""Content across the farm (docs/farm.md): a written blob is on two hosts when its commit
returns and outlives either; a lost host's copies are made again; a corrupt copy is never
served and is healed; a blob deleted goes from every host."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from flotilla.testing.farm import Farm, FarmHost

from ..integrators.helpers import wait_for
from .test_farm import ok


def _blob(host: FarmHost, digest: str) -> Path:
    return host.suite.root / "content" / "blobs" / "sha256" / digest.split(":", 1)[1]


def _right(host: FarmHost, digest: str) -> bool:
    try:
        return "sha256:" + hashlib.sha256(_blob(host, digest).read_bytes()).hexdigest() == digest
    except FileNotFoundError:
        return False


def _holders(farm: Farm, digest: str, hosts: list[FarmHost] | None = None) -> list[FarmHost]:
    return [h for h in hosts or farm.hosts if _right(h, digest)]


def _ingest(host: FarmHost, ns: str, size: int) -> tuple[str, str]:
    """A blob that exists nowhere else (text: ctr takes it on stdin); (its digest, the text)."""
    text = os.urandom(size // 2).hex()
    ok(host, "content", "ingest", f"written-{uuid.uuid4().hex[:8]}", namespace=ns, input=text)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest(), text


def test_a_written_blob_is_on_two_hosts_at_its_commit_and_outlives_either(farm: Farm) -> None:
    h1, h2, h3 = farm.hosts
    ns = "kept-" + uuid.uuid4().hex[:6]
    digest, text = _ingest(h1, ns, 3 << 20)
    holders = _holders(farm, digest)
    assert len(holders) == 2, [h.id for h in holders]   # both before `ctr content ingest` returned
    # a holder lost for good: its processes killed, its content data removed
    lost = h1 if h1 in holders else holders[0]
    survivors = [h for h in farm.hosts if h is not lost]
    reader = next((h for h in survivors if h not in holders), survivors[0])
    lost.lose()
    try:
        shutil.rmtree(lost.suite.root / "content")
        assert ok(reader, "content", "get", digest, namespace=ns) == text
        # once the host is lost for good (5 s here), the farm holds two copies again
        wait_for("two live hosts hold the blob", lambda: len(_holders(farm, digest, survivors)) == 2, 40, every=0.5)
    finally:
        lost.up()
    assert ok(lost, "content", "get", digest, namespace=ns) == text  # back, empty: fetched again
    ok(h2, "content", "rm", digest, namespace=ns)
    wait_for("every host dropped the deleted blob",
             lambda: not any(_blob(h, digest).exists() for h in farm.hosts), 40, every=0.5)


def test_a_corrupt_copy_is_never_served_and_is_healed(farm: Farm) -> None:
    ns = "heal-" + uuid.uuid4().hex[:6]
    digest, text = _ingest(farm.hosts[1], ns, 2 << 20)
    victim, other = _holders(farm, digest)
    time.sleep(2.5)  # a gateway serves a blob it just wrote from the file it wrote for 2 s (blobfiles.py)

    def corrupt() -> None:
        with open(_blob(victim, digest), "r+b") as f:  # same size, other bytes
            f.seek(1000)
            f.write(b"!" * 64)
    corrupt()
    # the victim's own client gets the right bytes: its copy is checked, dropped, fetched again
    assert ok(victim, "content", "get", digest, namespace=ns) == text
    assert _right(victim, digest)

    # `flotilla content verify` finds a copy gone bad at rest, and drops it; the farm makes
    # the second copy again
    corrupt()
    env = {**os.environ, "FLOTILLA_CONTENT_DB_URL": farm.db_url, "FLOTILLA_HOST_ID": victim.id}
    verify = subprocess.run(victim.command(sys.executable, "-m", "flotilla.cli", "content", "verify", "--root",
                                           str(victim.suite.root)), capture_output=True, text=True, env=env,
                            timeout=60)
    assert verify.returncode == 1 and f"corrupted\t{digest}" in verify.stdout, verify.stdout + verify.stderr
    # (had it stayed recorded, the farm would count two copies and make none)
    wait_for("two hosts hold a right copy again", lambda: len(_holders(farm, digest)) == 2, 40, every=0.5)
    # and every host reads it right
    for host in farm.hosts:
        assert ok(host, "content", "get", digest, namespace=ns) == text
    ok(other, "content", "rm", digest, namespace=ns)
