"""A farm's content store without NATS (services/content/copies.py), on SQLite and on a real
PostgreSQL: two hosts are two stores on their own roots and one database."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from flotilla.libs.api.content import WriterOpen
from flotilla.services.content import db
from flotilla.services.content.copies import Copies, from_registry
from flotilla.services.content.store import ContentStore


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def hosts(tmp_path: Path, db_url: str) -> Iterator[tuple[ContentStore, ContentStore]]:
    a = ContentStore(tmp_path / "a", host="a", db_url=db_url)
    b = ContentStore(tmp_path / "b", host="b", db_url=db_url)
    yield a, b
    a.close()
    b.close()


def commit(store: ContentStore, ref: str, data: bytes, namespace: str = "ns", lease: str = "") -> str:
    s = store.open_writer(WriterOpen(namespace, ref, lease=lease, local=False))
    if not s.shared:
        store.w_write(s.session, 0, data)
    return store.w_commit(s.session, len(data), sha(data), {}).digest


def copy_to(src: ContentStore, dst: ContentStore, digest: str) -> None:
    """What the farm's transfer ends in: verified bytes admitted on ``dst``."""
    copies = Copies(dst, clean=False)
    tmp = copies.incoming_file()
    tmp.write_bytes(src.blob_path(digest).read_bytes())
    assert copies.admit(tmp, digest, tmp.stat().st_size)


def test_a_commit_records_the_blob_its_copy_and_how_many_hosts_it_wants(hosts: tuple[ContentStore, ContentStore]) -> None:
    a, b = hosts
    written, pulled = commit(a, "written-1", b"mine"), commit(a, "layer-" + sha(b"layer"), b"layer")
    ca = Copies(a)
    assert ca.blob(written) is not None and ca.blob(written).wanted == 2 and ca.blob(written).holders == ("a",)  # type: ignore[union-attr]
    assert ca.blob(pulled).wanted == 1  # type: ignore[union-attr]  # a registry can serve it again
    assert from_registry("config-sha256:" + "0" * 64) and not from_registry("ingest-1")
    # host b sees the records, owns nothing more, and has no bytes: the farm has them
    assert b.info("ns", written).size == 4
    assert not Copies(b).check(written)
    copy_to(a, b, written)
    assert sorted(Copies(b).blob(written).holders) == ["a", "b"]  # type: ignore[union-attr]
    assert Copies(b).read(written, 1, 2) == b"in"


def test_a_blob_held_only_on_another_host_is_shared_not_written_again(hosts: tuple[ContentStore, ContentStore]) -> None:
    a, b = hosts
    digest = commit(a, "r", b"shared bytes")
    s = b.open_writer(WriterOpen("other", "r2", expected=digest, local=False))
    assert s.shared
    assert b.w_commit(s.session, 0, digest, {}).digest == digest
    assert b.info("other", digest).size == len(b"shared bytes")
    assert not b.blob_path(digest).exists()  # the record only: the bytes stay on a


def test_the_last_owner_deleted_takes_every_hosts_copy(hosts: tuple[ContentStore, ContentStore]) -> None:
    a, b = hosts
    digest = commit(a, "r", b"gone soon")
    copy_to(a, b, digest)
    assert a.delete("ns", digest) is True
    assert not a.blob_path(digest).exists()
    assert Copies(a).blob(digest) is None
    Copies(b).forget(digest)  # what the gone notice does on b
    assert not b.blob_path(digest).exists()


def test_a_copy_whose_file_changed_is_hashed_again_and_dropped_if_wrong(hosts: tuple[ContentStore, ContentStore]) -> None:
    a, _ = hosts
    digest = commit(a, "r", b"x" * 10_000)
    copies = Copies(a)
    assert copies.check(digest)
    os.utime(a.blob_path(digest), ns=(1, 1))  # touched, same bytes: still right
    assert copies.check(digest)
    with open(a.blob_path(digest), "r+b") as f:
        f.write(b"y")
    assert not copies.check(digest)
    assert not a.blob_path(digest).exists() and copies.blob(digest).holders == ()  # type: ignore[union-attr]


def test_an_ingest_is_placed_apart_from_its_writer_and_stays_while_its_host_lives(hosts: tuple[ContentStore, ContentStore]) -> None:
    a, _ = hosts
    copies = Copies(a)
    live = ["a", "b", "c"]
    first = copies.place("ns", "layer-x", live, caller="a")
    assert first != "a"
    assert copies.place("ns", "layer-x", live, caller=first) == first  # another writer: the same host
    moved = copies.place("ns", "layer-x", [h for h in live if h != first], caller="a")
    assert moved not in (first, "a")  # its host lost: another, still not the writer's
    assert copies.place("ns", "layer-x", ["a"], caller="a") == "a"  # alone: its own
    copies.unplace("ns", "layer-x")
    assert copies.placed("ns", "layer-x") == ""


def test_eviction_takes_the_least_recently_used_copy_the_farm_does_not_need(hosts: tuple[ContentStore, ContentStore]) -> None:
    a, b = hosts
    old, leased, needed, recent = (commit(a, f"layer-{sha(bytes([i]))}", bytes([i]) * 1000,
                                          lease="l1" if i == 1 else "") for i in range(4))
    for digest in (old, leased, recent):
        copy_to(a, b, digest)  # held elsewhere too; `needed` is only on a
    with a.engine.begin() as conn:  # all used long ago but `recent`
        conn.execute(update(db.copies).where(db.copies.c.host == "a").values(used_at=int(time.time()) - 3600))
        conn.execute(update(db.copies).where(db.copies.c.digest == recent).values(used_at=int(time.time())))
    copies = Copies(a)
    assert copies.evictable(4000, lambda h: True) == []       # it fits
    assert copies.evictable(0, lambda h: True) == [old]       # not leased, not needed, not recent
    assert copies.evictable(0, lambda h: h != "b") == []      # b lost: a's copies are needed


def test_the_blobs_short_of_copies_are_those_fewer_present_hosts_hold_than_wanted(
        hosts: tuple[ContentStore, ContentStore]) -> None:
    a, b = hosts
    written, pulled = commit(a, "written-1", b"two wanted"), commit(a, "layer-" + sha(b"one wanted"), b"one wanted")
    copies = Copies(a)
    assert [blob.digest for blob in copies.blobs(short_of=["a", "b"])] == [written]
    copy_to(a, b, written)
    assert copies.blobs(short_of=["a", "b"]) == []
    short = copies.blobs(short_of=["b"])  # a lost: both are short
    assert sorted(blob.digest for blob in short) == sorted([written, pulled])
    assert {blob.digest: sorted(blob.holders) for blob in short}[written] == ["a", "b"]
