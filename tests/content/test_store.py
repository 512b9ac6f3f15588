"""The store's rules without NATS: locks across instances, resume, paths, atomic commits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from flotilla.libs.api.content import WriterOpen
from flotilla.libs.directio import CACHED_HEAD, Appender
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from flotilla.services.content.store import ContentStore
from flotilla.testing.pagecache import PAGE, cached_pages


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_two_instances_on_one_store_refuse_a_second_writer_of_a_ref(tmp_path: Path) -> None:
    one, two = ContentStore(tmp_path), ContentStore(tmp_path)
    s = one.open_writer(WriterOpen("ns", "layer", local=False))
    with pytest.raises(Unavailable, match=r"^ref ns/layer locked for .* \(since .*\): unavailable$"):
        two.open_writer(WriterOpen("ns", "layer", local=False))
    with pytest.raises(Unavailable):
        one.open_writer(WriterOpen("ns", "layer", local=False))  # same instance too
    one.w_write(s.session, 0, b"abc")
    one.w_close(s.session)
    # released: the other instance resumes at the offset on disk
    s2 = two.open_writer(WriterOpen("ns", "layer", local=False))
    assert s2.offset == 3
    two.w_write(s2.session, 3, b"def")
    assert two.w_commit(s2.session, 6, sha(b"abcdef"), {}).digest == sha(b"abcdef")
    assert one.info("ns", sha(b"abcdef")).size == 6
    one.close(); two.close()


def test_path_like_ref_is_just_a_name(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    s = store.open_writer(WriterOpen("ns", "../../x", local=False))
    store.w_write(s.session, 0, b"data")
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    ingest = [p for p in (tmp_path / "content" / "ingest").iterdir()]
    assert len(ingest) == 1 and len(ingest[0].name) == 64
    assert [st.ref for st in store.list_statuses("ns", [])] == ["../../x"]
    store.w_commit(s.session, 0, "", {})
    store.close()


def test_failed_commit_leaves_no_blob_and_keeps_the_ingest(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    s = store.open_writer(WriterOpen("ns", "r", local=False))
    store.w_write(s.session, 0, b"12345")
    with pytest.raises(FailedPrecondition):
        store.w_commit(s.session, 0, sha(b"other"), {})
    with pytest.raises(FailedPrecondition):
        store.w_commit(s.session, 9, "", {})
    assert list((tmp_path / "content" / "blobs").rglob("*")) == []
    with pytest.raises(NotFound):
        store.info("ns", sha(b"12345"))
    assert store.status("ns", "r").offset == 5
    store.w_close(s.session)
    store.abort("ns", "r")
    with pytest.raises(NotFound, match="reference r: not found"):
        store.status("ns", "r")
    store.close()


def test_commit_of_an_expected_blob_already_there_drops_the_ingest(tmp_path: Path) -> None:
    """containerd's Write: a commit naming a blob the namespace has gets AlreadyExists, and
    the ingest is aborted (the gateway relies on this instead of asking Info first)."""
    store = ContentStore(tmp_path)
    slow = store.open_writer(WriterOpen("ns", "slow", local=False))
    store.w_write(slow.session, 0, b"same")
    fast = store.open_writer(WriterOpen("ns", "fast", local=False))
    store.w_write(fast.session, 0, b"same")
    store.w_commit(fast.session, 4, sha(b"same"), {})
    with pytest.raises(AlreadyExists, match=f"^blob with expected digest {sha(b'same')} exists$"):
        store.w_commit(slow.session, 4, sha(b"same"), {})
    with pytest.raises(NotFound):
        store.status("ns", "slow")
    assert store.info("ns", sha(b"same")).size == 4
    store.close()


def test_resume_rehashes_what_is_on_disk(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(3 << 20)
    s = store.open_writer(WriterOpen("ns", "big", total=len(data), local=False))
    store.w_write(s.session, 0, data[:1 << 20])
    # a killed instance: its sessions and locks vanish, the files stay
    os.close(store.sessions[s.session].lock_fd)
    store.sessions.clear()
    again = ContentStore(tmp_path)
    s2 = again.open_writer(WriterOpen("ns", "big", total=len(data), local=False))
    assert (s2.offset, s2.total, s2.digest) == (1 << 20, len(data), sha(data[:1 << 20]))
    again.w_write(s2.session, 1 << 20, data[1 << 20:])
    assert again.w_commit(s2.session, len(data), sha(data), {}).digest == sha(data)
    again.close()


def test_lease_taken_when_the_blob_already_exists(tmp_path: Path) -> None:
    from flotilla.libs.errors import AlreadyExists
    store = ContentStore(tmp_path)
    s = store.open_writer(WriterOpen("ns", "r", lease="first", local=False))
    store.w_write(s.session, 0, b"leased")
    d = store.w_commit(s.session, 0, "", {}).digest
    with pytest.raises(AlreadyExists, match=f"content {d}: already exists"):
        store.open_writer(WriterOpen("ns", "again", expected=d, lease="second", local=False))
    assert store.info("ns", d).leases == ["first", "second"]
    assert store.release_lease("ns", "first") == 1
    assert store.info("ns", d).leases == ["second"]
    store.close()


def test_a_collections_delete_keeps_a_record_that_gained_a_lease_since_its_mark(tmp_path: Path) -> None:
    """The collector lists the blobs (and their leases) before it sweeps; a writer that finds
    the blob there meanwhile adds its lease and is told it exists. The sweep must not then
    take the blob from under that writer (containerd's GC lock keeps it from happening there),
    nor say it went."""
    store = ContentStore(tmp_path)
    s = store.open_writer(WriterOpen("ns", "r", local=False))
    store.w_write(s.session, 0, b"swept?")
    d = store.w_commit(s.session, 0, "", {}).digest
    seen = store.info("ns", d).leases  # the mark: no lease, nothing refers to it
    with pytest.raises(AlreadyExists):
        store.open_writer(WriterOpen("ns", "import", expected=d, lease="import", local=False))
    with pytest.raises(FailedPrecondition, match="leased since the collection's mark"):
        store.delete("ns", d, leases_seen=seen)
    assert store.info("ns", d).leases == ["import"] and store.blob_path(d).exists()
    # what the mark saw is still all it holds: swept
    assert store.delete("ns", d, leases_seen=["import"]) is True and not store.blob_path(d).exists()
    store.close()


def test_a_committed_ingest_leaves_its_place_at_once_and_its_files_after(tmp_path: Path) -> None:
    """Commit answers once the ingest is out of its place (a writer of the same ref starts
    afresh at once); its files and its lock go on the clearing thread, and what a killed
    instance left there goes at the next start."""
    import threading
    store = ContentStore(tmp_path)
    gate = threading.Event()
    store._clearing.run(gate.wait)  # hold the clearing thread: the commit's leftovers queue
    s = store.open_writer(WriterOpen("ns", "r", local=False))
    store.w_write(s.session, 0, b"first")
    store.w_commit(s.session, 5, sha(b"first"), {})
    assert list((tmp_path / "content" / "ingest").iterdir()) == []
    assert len(list((tmp_path / "content" / "ingest-trash").iterdir())) == 1  # not cleared yet
    again = store.open_writer(WriterOpen("ns", "r", local=False))  # the same ref, at once
    assert again.offset == 0
    store.w_write(again.session, 0, b"second")
    store.w_commit(again.session, 6, sha(b"second"), {})
    gate.set()
    store.close()  # waits for the clearing thread
    assert list((tmp_path / "content" / "ingest-trash").iterdir()) == []

    (tmp_path / "content" / "ingest-trash" / "left-by-a-kill").mkdir()
    ContentStore(tmp_path).close()
    assert list((tmp_path / "content" / "ingest-trash").iterdir()) == []


def test_a_sync_that_reaches_the_total_hashes_and_syncs_before_the_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller wrote the data file itself: its sync after the last byte hashes the rest
    and makes it durable then, so the commit that follows does neither again."""
    store = ContentStore(tmp_path)
    data = os.urandom(1 << 20)
    s = store.open_writer(WriterOpen("ns", "local", total=len(data), local=True))
    assert s.file is not None
    with open(s.file.path, "r+b") as f:
        f.write(data)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    assert store.w_sync(s.session, len(data) // 2) == len(data) // 2 and not synced  # not all yet
    assert store.w_sync(s.session, len(data)) == len(data) and len(synced) == 1
    session = store.sessions[s.session]
    assert session.hasher.offset == len(data)
    assert store.w_commit(s.session, len(data), sha(data), {}).digest == sha(data)
    store.close()


def test_a_big_ingest_is_hashed_from_the_cache_and_leaves_it_past_its_head(tmp_path: Path) -> None:
    """The writer's bytes are hashed from the page cache as it goes; past the head they
    leave the cache behind the hash (and all at the commit's fsync), so the writer's next
    bytes reuse those pages. The head stays cached for the unpack that reads it next."""
    store = ContentStore(tmp_path)
    data = os.urandom(CACHED_HEAD + (24 << 20) + 5)
    s = store.open_writer(WriterOpen("ns", "big", total=len(data), local=True))
    assert s.file is not None
    app = Appender(s.file.path, 0)
    try:
        for offset in range(0, len(data), 1 << 20):
            written = app.append(data[offset:offset + (1 << 20)])
            if written % (8 << 20) == 0:
                store.w_sync(s.session, written)
        assert cached_pages(s.file.path, CACHED_HEAD, CACHED_HEAD + (8 << 20)) == 0  # hashed, dropped
    finally:
        app.close()
    info = store.w_commit(s.session, len(data), sha(data), {})
    blob = str(store.blob_path(info.digest))
    assert info.digest == sha(data)
    assert cached_pages(blob, CACHED_HEAD) == 0
    assert cached_pages(blob, 0, CACHED_HEAD) == CACHED_HEAD // PAGE
    store.close()


def test_calls_that_waited_for_a_session_ended_meanwhile_find_it_gone(tmp_path: Path) -> None:
    """Commits, writes and closes of one session at once (a client that repeats itself): the
    first to hold the session ends it, the others answer NotFound, never a closed file's
    EBADF."""
    import threading

    store = ContentStore(tmp_path)
    for round in range(20):
        s = store.open_writer(WriterOpen("ns", f"race-{round}", local=False))
        store.w_write(s.session, 0, b"x" * 1000)
        start, outcomes = threading.Barrier(6), []

        def call(fn, *args) -> None:  # type: ignore[no-untyped-def]
            start.wait()
            try:
                fn(*args)
                outcomes.append("ok")
            except (NotFound, FailedPrecondition, AlreadyExists) as exc:
                outcomes.append(type(exc).__name__)
            except Exception as exc:  # what the race used to give: OSError EBADF
                outcomes.append(repr(exc))
        threads = [threading.Thread(target=call, args=(store.w_commit, s.session, 0, "", {})) for _ in range(3)]
        threads += [threading.Thread(target=call, args=(store.w_write, s.session, 1000, b"y")),
                    threading.Thread(target=call, args=(store.w_status, s.session)),
                    threading.Thread(target=call, args=(store.w_sync, s.session, 1000))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert all(o in ("ok", "NotFound", "AlreadyExists", "FailedPrecondition") for o in outcomes), outcomes
    store.close()


class _Died(BaseException):
    """The process' death, at a chosen point of a commit."""


@pytest.mark.parametrize("expected_at_open", [True, False], ids=["expected-at-open", "expected-at-commit"])
def test_a_commit_killed_after_its_move_is_finished_by_the_next_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected_at_open: bool) -> None:
    """An instance SIGKILLed between moving the data file into place and recording the blob
    leaves a blob no namespace owns and an ingest without data: the ref's next writer (the
    same client, resuming) commits it as a shared blob, with no bytes. Also when the ingest
    was opened with no expected digest, as containerd's metadata opens its backend's."""
    import flotilla.services.content.store as store_module

    data = b"layer bytes " * 1000
    expected = sha(data) if expected_at_open else ""
    one = ContentStore(tmp_path)
    s = one.open_writer(WriterOpen("ns", "layer", len(data), expected, local=False))
    one.w_write(s.session, 0, data)

    def die(_path: Path) -> None:  # _own calls it right after the move
        raise _Died()
    monkeypatch.setattr(store_module, "_fsync_dir", die)
    with pytest.raises(_Died):
        one.w_commit(s.session, len(data), sha(data), {})
    monkeypatch.undo()
    assert one.blob_path(sha(data)).exists()
    dead = one.sessions.pop(s.session)   # its descriptors (and the ref's lock) go with it
    os.close(dead.fd)
    os.close(dead.lock_fd)
    again = ContentStore(tmp_path)
    resumed = again.open_writer(WriterOpen("ns", "layer", len(data), expected, local=False))
    assert resumed.offset == len(data) and resumed.shared
    info = again.w_commit(resumed.session, len(data), sha(data), {})
    assert (info.digest, info.size) == (sha(data), len(data))
    assert again.read("ns", sha(data), 0, -1)[:11] == b"layer bytes"
    again.close()


def test_opens_racing_an_ingest_that_ends_get_the_lock_or_a_clear_unavailable(tmp_path: Path) -> None:
    """Many writers of one ref at once, each committing when it gets the ref (a farm sends
    every host's writer of a ref to one host): none sees a stray OS error."""
    import threading
    import traceback
    store = ContentStore(tmp_path)
    errors: list[str] = []

    def writer() -> None:
        for _ in range(30):
            try:
                s = store.open_writer(WriterOpen("ns", "layer-race", local=False))
            except (Unavailable, AlreadyExists):
                continue
            except BaseException:  # noqa: BLE001 - what the test is for
                errors.append(traceback.format_exc())
                return
            store.w_write(s.session, 0, b"racing")
            try:
                store.w_commit(s.session, 6, "", {})
            except AlreadyExists:
                pass
            store.delete("ns", sha(b"racing"))
    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    store.close()
    assert not errors, "\n".join(errors)
