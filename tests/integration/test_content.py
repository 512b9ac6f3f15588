"""Issue 3: ctr content against the whole suite behaves as against containerd; resume after
SIGKILL of the content service and of the client; concurrent writers; isolation."""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbc_grpc
from flotilla.testing import CTR, ContainerdPeer, PrivateSuite, ctr
from flotilla.testing.peers import terminate
from tests.integration.busspy import requests_seen

MiB = 1 << 20
_AGE = re.compile(r"Less than a second|About a minute|\d+ seconds?|\d+ minutes?")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_LABELS = re.compile(r"[\w./-]+=[^,\s]*(?:,[\w./-]+=[^,\s]*)+")


def _norm(text: str, address: str) -> str:
    # Go prints label maps in random order
    text = _LABELS.sub(lambda m: ",".join(sorted(m.group(0).split(","))), text)
    # ctr aligns columns with tabs: an age's width changes the header's run of tabs
    text = re.sub(r"\t+", "\t", _AGE.sub("AGE", text.replace(address, "ADDRESS")))
    head, *body = text.split("\n")
    return "\n".join([head, *sorted(body)])  # containerd lists ingests in map order


_created: list[str] = []


def _new_ns(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    _created.append(name)
    return name


def _empty_namespace(address: str, ns: str) -> None:
    """Abort its ingests, delete its blobs, then the namespace itself (containerd made one)."""
    md = [("containerd-namespace", ns)]
    with grpc.insecure_channel(f"unix://{address}") as ch:
        stub = pbc_grpc.ContentStub(ch)
        for st in stub.ListStatuses(pbc.ListStatusesRequest(), metadata=md).statuses:
            try:
                stub.Abort(pbc.AbortRequest(ref=st.ref), metadata=md)
            except grpc.RpcError:
                pass
        for block in stub.List(pbc.ListContentRequest(), metadata=md):
            for info in block.info:
                try:
                    stub.Delete(pbc.DeleteContentRequest(digest=info.digest), metadata=md)
                except grpc.RpcError:
                    pass
    ctr(address, "namespaces", "rm", ns)


@pytest.fixture(autouse=True)
def _clean_namespaces(request: pytest.FixtureRequest) -> Iterator[None]:
    _created.clear()
    yield
    for name in ("suite", "containerd"):
        if name in request.fixturenames:
            peer = request.getfixturevalue(name)
            for ns in _created:
                _empty_namespace(peer.address, ns)


def _run(address: str, args: list[str], data: bytes | None, ns: str) -> tuple[int, str, str, bytes]:
    proc = subprocess.run([CTR, "--address", address, "--namespace", ns, *args], input=data or b"",
                          capture_output=True, timeout=120)
    out = proc.stdout
    text = out.decode(errors="replace") if args[:2] != ["content", "get"] else ""
    return proc.returncode, _norm(text, address), _norm(proc.stderr.decode(), address), \
        out if args[:2] == ["content", "get"] else b""


def _same(suite: PrivateSuite, peer: ContainerdPeer, steps: list[tuple[list[str], bytes | None]], ns: str) -> None:
    for args, data in steps:
        ours = _run(suite.address, args, data, ns)
        theirs = _run(peer.address, args, data, ns)
        assert ours == theirs, args


def test_ctr_content_commands_match_containerd(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    ns = _new_ns("ct")
    a, b = os.urandom(3 * MiB + 17), b"small blob\n"
    da, db = sha(a), sha(b)
    steps: list[tuple[list[str], bytes | None]] = [
        (["content", "ls"], None),
        (["content", "ingest", "ref-a"], a),
        (["content", "ingest", "ref-a2"], a),                           # same bytes, another ref
        (["content", "ingest", "--expected-digest", db, "--expected-size", str(len(b)), "ref-b"], b),
        (["content", "ingest", "--expected-digest", db, "ref-b-again"], b),  # already there
        # a GC root: containerd's GC (run after each delete) must not race our `rm` below
        (["content", "label", db, "containerd.io/gc.root=keep"], None),
        (["content", "ls"], None),
        (["content", "ls", "-q"], None),
        (["content", "label", da, "x=1", "y=2"], None),
        (["content", "label", db, "x=2"], None),
        (["content", "label", da, "y="], None),                         # removes y
        (["content", "ls", "labels.x==1"], None),
        (["content", "ls", "labels.x"], None),
        (["content", "ls", f"digest=={db}"], None),
        (["content", "ls", "labels.x==2,labels.y"], None),
        (["content", "ls", "labels.x=="], None),                        # parse error
        (["content", "get", da], None),
        (["content", "get", db], None),
        (["content", "get", sha(b"nothing")], None),                    # NotFound
        (["content", "get", "sha256:abc"], None),                       # bad digest
        (["content", "ingest", "--expected-digest", sha(b"other"), "ref-wrong"], b"data"),
        (["content", "ingest", "--expected-size", "100", "ref-short"], b"short"),
        (["content", "ingest", "--expected-digest", "sha256:nothex", "ref-bad"], b"x"),
        (["content", "ingest", "../../x"], b"path-like ref"),
        (["content", "active"], None),
        (["content", "active", "ref-w"], None),
        (["content", "ls"], None),
        (["content", "rm", da, db], None),
        (["content", "rm", da], None),
        (["content", "get", da], None),
    ]  # (a later `ls` differs: containerd's GC collects the unreferenced blob after a delete)
    _same(suite, containerd, steps, ns)
    # no partial blob is visible for the failed ingests
    listed = suite.ctr("content", "ls", "-q", namespace=ns, check=True).stdout.split()
    assert listed == [sha(b"path-like ref")]
    for address in (suite.address, containerd.address):
        ctr(address, "content", "rm", sha(b"path-like ref"), namespace=ns)


def _grpc_codes(address: str, ns: str) -> list[str]:
    out = []
    with grpc.insecure_channel(f"unix://{address}") as ch:
        stub = pbc_grpc.ContentStub(ch)
        md = [("containerd-namespace", ns)]
        calls = [
            lambda: stub.Info(pbc.InfoRequest(digest="sha256:abc"), metadata=md),
            lambda: stub.Info(pbc.InfoRequest(digest=sha(b"none")), metadata=md),
            lambda: stub.Info(pbc.InfoRequest(digest=sha(b"none"))),
            lambda: stub.Delete(pbc.DeleteContentRequest(digest="bad"), metadata=md),
            lambda: stub.Delete(pbc.DeleteContentRequest(digest=sha(b"none")), metadata=md),
            lambda: stub.Update(pbc.UpdateRequest(info=pbc.Info(digest=sha(b"none"))), metadata=md),
            lambda: stub.Status(pbc.StatusRequest(ref="nope"), metadata=md),
            lambda: stub.Abort(pbc.AbortRequest(ref="nope"), metadata=md),
            lambda: list(stub.Read(pbc.ReadContentRequest(digest=sha(b"none")), metadata=md)),
            lambda: list(stub.Write(iter([pbc.WriteContentRequest(action=pbc.STAT)]), metadata=md)),
        ]
        for call in calls:
            try:
                call()
                out.append("OK")
            except grpc.RpcError as exc:
                out.append(f"{exc.code().name}: {exc.details()}")
    return out


def test_grpc_errors_match_containerd(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    ns = _new_ns("ce")
    assert _grpc_codes(suite.address, ns) == _grpc_codes(containerd.address, ns)


class WriteStream:
    """One Write stream driven request by request."""

    def __init__(self, stub: pbc_grpc.ContentStub, ns: str) -> None:
        self.q: queue.Queue[pbc.WriteContentRequest | None] = queue.Queue()
        self.responses = stub.Write(iter(self.q.get, None), metadata=[("containerd-namespace", ns)], timeout=600)

    def send(self, req: pbc.WriteContentRequest) -> pbc.WriteContentResponse:
        self.q.put(req)
        return next(self.responses)

    def close(self) -> None:
        self.q.put(None)
        self.responses.cancel()


def _ref_locked(address: str, ns: str) -> tuple[str, str]:
    with grpc.insecure_channel(f"unix://{address}") as ch:
        stub = pbc_grpc.ContentStub(ch)
        first = WriteStream(stub, ns)
        first.send(pbc.WriteContentRequest(action=pbc.STAT, ref="shared-ref"))
        first.send(pbc.WriteContentRequest(action=pbc.WRITE, ref="shared-ref", data=b"first"))
        second = WriteStream(stub, ns)
        try:
            second.send(pbc.WriteContentRequest(action=pbc.STAT, ref="shared-ref"))
            result = ("OK", "")
        except grpc.RpcError as exc:
            result = (exc.code().name, exc.details() or "")
        second.close()
        resp = first.send(pbc.WriteContentRequest(action=pbc.COMMIT, data=b" wins", offset=5))
        assert resp.digest == sha(b"first wins")
        first.close()
        return result


def test_two_writers_on_one_ref_one_is_refused(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    ns = _new_ns("cl")
    ours, theirs = _ref_locked(suite.address, ns), _ref_locked(containerd.address, ns)
    assert ours[0] == theirs[0] == "UNAVAILABLE"
    pattern = r"ref \S+shared-ref locked for \S+ \(since .*\): unavailable"
    assert re.fullmatch(pattern, ours[1]) and re.fullmatch(pattern, theirs[1]), (ours, theirs)
    for address in (suite.address, containerd.address):
        assert ctr(address, "content", "get", sha(b"first wins"), namespace=ns).stdout == "first wins"


def _blob_files(suite: PrivateSuite) -> list[str]:
    return sorted(p.name for p in (suite.suite.root / "content" / "blobs" / "sha256").iterdir())


def test_same_bytes_two_refs_concurrently_stored_once(suite: PrivateSuite) -> None:
    ns = _new_ns("cs")
    data = os.urandom(8 * MiB)
    procs = [subprocess.Popen([CTR, "--address", suite.address, "-n", ns, "content", "ingest", f"twin-{i}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    results = [None, None]

    def feed(i: int) -> None:
        results[i] = procs[i].communicate(data, timeout=120)  # type: ignore[call-overload]
    threads = [threading.Thread(target=feed, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.returncode for p in procs] == [0, 0], results
    assert suite.ctr("content", "ls", "-q", namespace=ns, check=True).stdout.split() == [sha(data)]
    assert _blob_files(suite).count(sha(data).split(":")[1]) == 1
    assert suite.ctr("content", "active", namespace=ns, check=True).stdout.splitlines()[1:] == []
    suite.ctr("content", "rm", sha(data), namespace=ns, check=True)


def test_namespace_isolation_blob_stored_once(suite: PrivateSuite, tmp_path: Path) -> None:
    a, b = _new_ns("iso-a"), _new_ns("iso-b")
    data = os.urandom(2 * MiB)
    d = sha(data)
    subprocess.run([CTR, "--address", suite.address, "-n", a, "content", "ingest", "r"], input=data, check=True)
    assert suite.ctr("content", "ls", "-q", namespace=b, check=True).stdout.split() == []
    assert suite.ctr("content", "get", d, namespace=b).returncode == 1
    # b ingests the same bytes (expected digest known): containerd's shared policy; ctr
    # then seeks its input to the end (so, as with containerd, the input must be a file)
    src = tmp_path / "blob"
    src.write_bytes(data)
    with open(src, "rb") as f:
        subprocess.run([CTR, "--address", suite.address, "-n", b, "content", "ingest", "--expected-digest", d, "r"],
                       stdin=f, check=True)
    assert suite.ctr("content", "ls", "-q", namespace=b, check=True).stdout.split() == [d]
    assert _blob_files(suite).count(d.split(":")[1]) == 1
    suite.ctr("content", "rm", d, namespace=a, check=True)
    got = subprocess.run([CTR, "--address", suite.address, "-n", b, "content", "get", d], capture_output=True)
    assert got.stdout == data
    suite.ctr("content", "rm", d, namespace=b, check=True)
    assert d.split(":")[1] not in _blob_files(suite)


def test_content_delete_event(suite: PrivateSuite) -> None:
    ns = _new_ns("cev")
    proc = subprocess.Popen([CTR, "--address", suite.address, "events"], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 30
        data = b"event me"
        while time.monotonic() < deadline and not any("/content/delete" in line for line in lines):
            subprocess.run([CTR, "--address", suite.address, "-n", ns, "content", "ingest", "e"], input=data,
                           check=True)
            suite.ctr("content", "rm", sha(data), namespace=ns, check=True)
            time.sleep(0.2)
        line = next(line for line in lines if "/content/delete" in line)
        assert f" {ns} /content/delete " in line and sha(data) in line
    finally:
        terminate(proc, 10)  # SIGTERM: a test started as a background job has SIGINT ignored


# -- resume --------------------------------------------------------------------------


def _chunks(size: int, seed: bytes) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes, MiB by MiB, without holding them all."""
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    for i in range(size // MiB):
        yield i.to_bytes(8, "little") + block[8:]


def _digest_of(size: int, seed: bytes) -> str:
    h = hashlib.sha256()
    for c in _chunks(size, seed):
        h.update(c)
    return "sha256:" + h.hexdigest()


def _wait_status(stub: pbc_grpc.ContentStub, ns: str, ref: str) -> pbc.Status:
    deadline = time.monotonic() + 60
    while True:
        try:
            return stub.Status(pbc.StatusRequest(ref=ref), metadata=[("containerd-namespace", ns)], timeout=10).status
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _resume(stub: pbc_grpc.ContentStub, ns: str, ref: str, size: int, seed: bytes, expected: str) -> int:
    _wait_status(stub, ns, ref)
    w = WriteStream(stub, ns)
    try:
        st = w.send(pbc.WriteContentRequest(action=pbc.STAT, ref=ref, total=size, expected=expected))
        # we hold the ref now: what Status reports is where we go on
        offset = _wait_status(stub, ns, ref).offset
        assert st.offset == offset
        pos = 0
        for chunk in _chunks(size, seed):
            if pos >= offset:
                w.send(pbc.WriteContentRequest(action=pbc.WRITE, offset=pos, data=chunk))
            pos += len(chunk)
        done = w.send(pbc.WriteContentRequest(action=pbc.COMMIT, offset=size, total=size, expected=expected))
        assert done.digest == expected and done.offset == size
    finally:
        w.close()
    return offset


def _ingested_digest(address: str, ns: str, digest: str) -> str:
    """The digest of what the store gives back, read in one streamed Read call."""
    h = hashlib.sha256()
    with grpc.insecure_channel(f"unix://{address}",
                               options=[("grpc.max_receive_message_length", 16 << 20)]) as ch:
        for resp in pbc_grpc.ContentStub(ch).Read(pbc.ReadContentRequest(digest=digest),
                                                  metadata=[("containerd-namespace", ns)]):
            h.update(resp.data)
    return "sha256:" + h.hexdigest()


@pytest.mark.slow
def test_a_write_stream_survives_a_sigkill_of_the_content_service(suite: PrivateSuite, stress: int) -> None:
    """Issue 22: the gateway opens the ingest again on the next content instance, where its
    data file stands, and the client's stream goes on to a commit of the right bytes."""
    _write_through_a_content_kill(suite, stress)


@pytest.mark.slow
def test_a_remote_write_stream_survives_a_sigkill_of_the_content_service(stress: int) -> None:
    """The same with the bytes sent as chunks over NATS (as from another host of a farm): the
    chunks the killed instance had not answered are sent again, less what its file holds."""
    with PrivateSuite(FLOTILLA_CONTENT_LOCAL="0") as remote:
        _write_through_a_content_kill(remote, stress)


@pytest.mark.slow
@pytest.mark.parametrize("local", ["1", "0"], ids=["local", "over-nats"])
def test_a_read_stream_survives_a_sigkill_of_the_content_service(local: str) -> None:
    """A client's streamed Content.Read goes on through the content service's death: the
    gateway reads the blob's file itself (local), or asks again for the chunks it lacks
    (over NATS, as another host would)."""
    size = 64 * MiB
    seed = uuid.uuid4().bytes
    expected = _digest_of(size, seed)
    ns = _new_ns("rd")
    with PrivateSuite(FLOTILLA_CONTENT_LOCAL=local) as suite:
        with grpc.insecure_channel(f"unix://{suite.address}",
                                   options=[("grpc.max_receive_message_length", 16 << 20)]) as ch:
            stub = pbc_grpc.ContentStub(ch)
            w = WriteStream(stub, ns)
            w.send(pbc.WriteContentRequest(action=pbc.STAT, ref="to-read", total=size, expected=expected))
            pos = 0
            for chunk in _chunks(size, seed):
                w.send(pbc.WriteContentRequest(action=pbc.WRITE, offset=pos, data=chunk))
                pos += len(chunk)
            w.send(pbc.WriteContentRequest(action=pbc.COMMIT, offset=size, total=size, expected=expected))
            w.close()
            h, got, killed = hashlib.sha256(), 0, 0
            for resp in stub.Read(pbc.ReadContentRequest(digest=expected), metadata=[("containerd-namespace", ns)]):
                h.update(resp.data)
                got += len(resp.data)
                if not killed and got >= size // 4:
                    killed = suite.suite.program_pid("content")
                    os.kill(killed, signal.SIGKILL)
        assert killed and got == size
        assert "sha256:" + h.hexdigest() == expected


def _write_through_a_content_kill(suite: PrivateSuite, stress: int) -> None:
    size = 64 * MiB * stress
    seed = uuid.uuid4().bytes
    expected = _digest_of(size, seed)
    ns, ref = _new_ns("rk"), "big-layer"
    with grpc.insecure_channel(f"unix://{suite.address}") as ch:
        stub = pbc_grpc.ContentStub(ch)
        w = WriteStream(stub, ns)
        w.send(pbc.WriteContentRequest(action=pbc.STAT, ref=ref, total=size, expected=expected))
        pos = 0
        killed = 0
        try:
            for chunk in _chunks(size, seed):
                w.send(pbc.WriteContentRequest(action=pbc.WRITE, offset=pos, data=chunk))
                pos += len(chunk)
                if not killed and pos >= size // 2:
                    killed = suite.suite.program_pid("content")
                    os.kill(killed, signal.SIGKILL)
            w.send(pbc.WriteContentRequest(action=pbc.COMMIT, offset=size, total=size, expected=expected))
        finally:
            w.close()
    assert suite.suite.program_pid("content") not in (0, killed)  # it did die in between
    assert _ingested_digest(suite.address, ns, expected) == expected
    suite.ctr("content", "rm", expected, namespace=ns, check=True)


@pytest.mark.slow
def test_resume_after_sigkill_of_the_client(suite: PrivateSuite, stress: int) -> None:
    size = 64 * MiB * stress
    seed = uuid.uuid4().bytes
    expected = _digest_of(size, seed)
    ns, ref = _new_ns("rc"), "client-dies"
    client = subprocess.Popen([CTR, "--address", suite.address, "-n", ns, "content", "ingest",
                               "--expected-size", str(size), "--expected-digest", expected, ref],
                              stdin=subprocess.PIPE)
    assert client.stdin is not None
    sent = 0
    for chunk in _chunks(size, seed):
        client.stdin.write(chunk)
        sent += len(chunk)
        if sent >= size // 2:
            client.stdin.flush()
            break
    with grpc.insecure_channel(f"unix://{suite.address}") as ch:
        stub = pbc_grpc.ContentStub(ch)
        deadline = time.monotonic() + 60  # until ctr has written something
        while _wait_status(stub, ns, ref).offset == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.kill()
        client.wait()
        client.stdin.close()
        # the gateway ends the session when the stream dies; then the ref is free again
        deadline = time.monotonic() + 60
        while True:
            try:
                offset = _resume(stub, ns, ref, size, seed, expected)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert 0 < offset < size
    assert _ingested_digest(suite.address, ns, expected) == expected
    suite.ctr("content", "rm", expected, namespace=ns, check=True)


def test_resume_with_ctr_after_client_killed(suite: PrivateSuite, tmp_path: Path) -> None:
    """ctr itself resumes: it skips what Status reports and sends the rest."""
    ns, ref = _new_ns("rr"), "ctr-resume"
    data = os.urandom(6 * MiB)
    client = subprocess.Popen([CTR, "--address", suite.address, "-n", ns, "content", "ingest", ref],
                              stdin=subprocess.PIPE)
    assert client.stdin is not None
    client.stdin.write(data[:3 * MiB])
    client.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        active = suite.ctr("content", "active", namespace=ns).stdout
        if ref in active and "3.146MB" in active:
            break
        time.sleep(0.05)
    client.kill()
    client.wait()
    client.stdin.close()
    src = tmp_path / "blob"  # ctr seeks its input to the offset Status reports
    src.write_bytes(data)
    deadline = time.monotonic() + 60
    while True:
        with open(src, "rb") as f:
            res = subprocess.run([CTR, "--address", suite.address, "-n", ns, "content", "ingest", ref],
                                 stdin=f, capture_output=True)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert res.returncode == 0, res.stderr
    assert suite.ctr("content", "ls", "-q", namespace=ns, check=True).stdout.split() == [sha(data)]
    suite.ctr("content", "rm", sha(data), namespace=ns, check=True)


# -- the byte paths ------------------------------------------------------------------


async def _spy(suite: PrivateSuite, body) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Count the session calls on the suite's bus while ``body`` runs."""
    seen = await requests_seen(suite, ["content.i.*.>"], body)
    return dict(Counter(".".join(subject.rsplit(".", 2)[-2:]) for subject in seen["content.i.*.>"]))


def _roundtrip(s: PrivateSuite) -> None:
    ns = _new_ns("path")
    data = os.urandom(24 * MiB + 5)
    subprocess.run([CTR, "--address", s.address, "-n", ns, "content", "ingest", "p"], input=data, check=True)
    got = subprocess.run([CTR, "--address", s.address, "-n", ns, "content", "get", sha(data)],
                         capture_output=True, check=True).stdout
    assert got == data
    s.ctr("content", "rm", sha(data), namespace=ns, check=True)


async def test_gateway_uses_the_local_path_on_the_content_host(suite: PrivateSuite) -> None:
    seen = await _spy(suite, lambda: _roundtrip(suite))
    assert seen.get("w.write", 0) == 0 and seen.get("w.sync", 0) >= 1, seen


async def test_gateway_over_nats_keeps_the_same_guarantees() -> None:
    with PrivateSuite(FLOTILLA_CONTENT_LOCAL="0") as remote:
        seen = await _spy(remote, lambda: _roundtrip(remote))
        assert seen.get("w.write", 0) >= 24 and seen.get("w.sync", 0) == 0, seen
        res = subprocess.run([CTR, "--address", remote.address, "content", "ingest", "--expected-digest",
                              sha(b"other"), "bad"], input=b"data", capture_output=True)
        assert res.returncode == 1 and "unexpected commit digest" in res.stderr.decode()
        assert remote.ctr("content", "ls", "-q", check=True).stdout.split() == []


async def test_write_keeps_the_containerd_lease_header(suite: PrivateSuite) -> None:
    from flotilla.libs.api.content import ContentClient
    ns, data = _new_ns("lease"), b"held by a lease"

    def write() -> None:
        with grpc.insecure_channel(f"unix://{suite.address}") as ch:
            stub = pbc_grpc.ContentStub(ch)
            q: queue.Queue[pbc.WriteContentRequest | None] = queue.Queue()
            responses = stub.Write(iter(q.get, None), metadata=[("containerd-namespace", ns),
                                                                ("containerd-lease", "build-42")])
            q.put(pbc.WriteContentRequest(action=pbc.COMMIT, ref="l", data=data, expected=sha(data)))
            assert next(responses).digest == sha(data)
            q.put(None)
    await asyncio.to_thread(write)
    bus = await suite.bus("lease-check")
    try:
        info = await ContentClient(bus, suite.suite.prefix).info(ns, sha(data))
        assert info.leases == ["build-42"]
    finally:
        await bus.close()
    suite.ctr("content", "rm", sha(data), namespace=ns, check=True)


def _offset_rules(address: str, ns: str) -> list[str]:
    out = []
    data = b"0123456789"
    with grpc.insecure_channel(f"unix://{address}") as ch:
        stub = pbc_grpc.ContentStub(ch)
        md = [("containerd-namespace", ns)]

        def stream(*reqs: pbc.WriteContentRequest) -> str:
            try:
                last = list(stub.Write(iter(reqs), metadata=md))[-1]
                # (Flotilla leaves a write response's running digest empty: docs/content.md)
                digest = last.digest if reqs[-1].action != pbc.WRITE else ""
                return f"OK offset={last.offset} digest={digest}"
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"

        out.append(stream(pbc.WriteContentRequest(action=pbc.STAT, ref="o"),
                          pbc.WriteContentRequest(action=pbc.WRITE, offset=5, data=b"x")))
        out.append(stream(pbc.WriteContentRequest(action=pbc.WRITE, ref="o", data=data[:4])))
        # resumed at 4; offset 0 starts again; then a commit with the whole size
        out.append(stream(pbc.WriteContentRequest(action=pbc.STAT, ref="o"),
                          pbc.WriteContentRequest(action=pbc.WRITE, offset=0, data=data[:6]),
                          pbc.WriteContentRequest(action=pbc.COMMIT, offset=6, data=data[6:], total=10,
                                                  expected=sha(data), labels={"l": "v"})))
        out.append(stream(pbc.WriteContentRequest(action=pbc.STAT, ref="again", expected=sha(data))))
        for offset, size in ((0, 0), (3, 4), (8, 100), (10, 0), (11, 0), (-5, 2)):
            try:
                got = b"".join(r.data for r in stub.Read(pbc.ReadContentRequest(digest=sha(data), offset=offset,
                                                                                size=size), metadata=md))
                out.append(f"read {offset},{size}: {got!r}")
            except grpc.RpcError as exc:
                out.append(f"read {offset},{size}: {exc.code().name}: {exc.details()}")
        info = stub.Info(pbc.InfoRequest(digest=sha(data)), metadata=md).info
        out.append(f"{info.size} {dict(info.labels)}")
        stub.Delete(pbc.DeleteContentRequest(digest=sha(data)), metadata=md)
    return out


def test_write_offsets_and_read_ranges_match_containerd(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    ns = _new_ns("co")
    ours, theirs = _offset_rules(suite.address, ns), _offset_rules(containerd.address, ns)
    assert ours == theirs
    assert ours[0] == "OUT_OF_RANGE: write @5 must occur at current offset 0"


async def test_gateway_info_follows_changes_made_past_it(suite: PrivateSuite) -> None:
    """The gateway answers a repeated Info itself (services/gateway/records.py), yet sees
    a label update and a delete made by another caller of the content service (another
    gateway, the garbage collector) as soon as the notice crosses the bus: well within its
    cache's TTL."""
    from flotilla.libs.api.content import ContentClient, Info
    from tests.integration.records_kit import count_requests, not_found, soon
    ns, data = _new_ns("infocache"), b"cached record"
    md = [("containerd-namespace", ns)]
    bus = await suite.bus("elsewhere")
    try:
        with grpc.insecure_channel(f"unix://{suite.address}") as ch:
            stub = pbc_grpc.ContentStub(ch)
            # written on this channel, so by the gateway that answers its Infos (each of the
            # suite's gateways keeps its own records)
            w = WriteStream(stub, ns)
            try:
                await asyncio.to_thread(w.send, pbc.WriteContentRequest(action=pbc.STAT, ref="c", total=len(data)))
                await asyncio.to_thread(w.send, pbc.WriteContentRequest(action=pbc.WRITE, offset=0, data=data))
                await asyncio.to_thread(w.send, pbc.WriteContentRequest(
                    action=pbc.COMMIT, offset=len(data), total=len(data), expected=sha(data)))
            finally:
                w.close()
            asked = await count_requests(bus, f"{suite.suite.prefix}.content.info")
            await count_requests(bus, f"{suite.suite.prefix}.content.local_path", asked)

            def info() -> pbc.Info:
                return stub.Info(pbc.InfoRequest(digest=sha(data)), metadata=md).info
            for _ in range(3):
                assert dict((await asyncio.to_thread(info)).labels) == {}
            read = await asyncio.to_thread(
                lambda: b"".join(r.data for r in stub.Read(pbc.ReadContentRequest(digest=sha(data)), metadata=md)))
            assert read == data
            await bus.nc.flush()
            assert asked == {}  # the commit's own record answered every Info, its file the Read

            # its own update's answer is kept: the notice of that update leaves it kept
            await asyncio.to_thread(stub.Update, pbc.UpdateRequest(
                info=pbc.Info(digest=sha(data), labels={"mine": "1"}), update_mask={"paths": ["labels.mine"]}),
                metadata=md)
            await asyncio.sleep(0.1)  # the notice has arrived by now
            assert dict((await asyncio.to_thread(info)).labels) == {"mine": "1"}
            await bus.nc.flush()
            assert asked == {}

            elsewhere = ContentClient(bus, suite.suite.prefix)
            await elsewhere.update(ns, Info(digest=sha(data), labels={"seen": "elsewhere"}), ["labels.seen"])
            await asyncio.to_thread(soon, lambda: dict(info().labels) == {"mine": "1", "seen": "elsewhere"})

            await elsewhere.delete(ns, sha(data))
            await asyncio.to_thread(soon, lambda: not_found(info))
    finally:
        await bus.close()
