"""The content service alone with nats-server: the contract's client on both byte paths,
and the documented subjects driven with plain msgpack."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import uuid

import msgpack
import pytest

from flotilla.libs.api.content import ContentClient
from flotilla.libs.bus import Bus
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from .conftest import ContentProcs


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("local", [True, False], ids=["local", "nats"])
async def test_write_read_both_paths(bus: Bus, content_service: ContentProcs, local: bool) -> None:
    c = ContentClient(bus, content_service.prefix, local=local)
    data = os.urandom(5 * (1 << 20) + 12345)
    digest = await c.write_blob("ns1", "ref-" + uuid.uuid4().hex, data, expected=sha(data), total=len(data),
                                labels={"a": "b"}, lease="lease1")
    assert digest == sha(data)
    info = await c.info("ns1", digest)
    assert (info.size, info.labels, info.leases) == (len(data), {"a": "b"}, ["lease1"])
    assert await c.read_all("ns1", digest) == data
    part = b"".join([p async for p in c.read("ns1", digest, offset=1 << 20, size=3 * (1 << 20) + 7)])
    assert part == data[1 << 20:4 * (1 << 20) + 7]
    assert (await c.local_path("ns1", digest) is not None) == local or not local
    # from a stream, without expectations
    async def gen():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 300_000):
            yield data[i:i + 300_000]
    assert await c.write_blob("ns2", "r2", gen()) == digest


async def test_local_writer_leaves_no_file_or_thread_open(client: ContentClient) -> None:
    """A local writer opens its data file as it is made (while its caller still fetches the
    bytes): closed unused, or after a truncate and a commit, it leaves no descriptor and no
    thread behind, and a truncate still starts the bytes afresh."""
    def open_now() -> tuple[int, int]:
        writing = [t for t in threading.enumerate() if t.name.startswith("content-write")]
        return len(os.listdir("/proc/self/fd")), len(writing)
    before = open_now()
    unused = await client.writer("w", "unused-" + uuid.uuid4().hex, total=10)
    assert unused.local
    await unused.close()
    again = await client.writer("w", "again-" + uuid.uuid4().hex)
    await again.write(b"first bytes")
    await again.truncate()
    await again.write(b"xyz")
    info = await again.commit(3, sha(b"xyz"))
    await again.close()
    assert await client.read_all("w", info.digest) == b"xyz"
    for _ in range(100):  # the disk threads end just after their last work
        if open_now() == before:
            break
        await asyncio.sleep(0.01)
    assert open_now() == before


async def test_local_path_is_the_committed_file(client: ContentClient, content_service: ContentProcs) -> None:
    data = b"hello local"
    d = await client.write_blob("default", "x", data, expected=sha(data))
    path = await client.local_path("default", d)
    assert path is not None and open(path, "rb").read() == data
    assert path.startswith(str(content_service.base))
    with pytest.raises(NotFound, match=f"content digest {d}: not found"):
        await client.local_path("other", d)


async def test_errors_leave_nothing_visible(client: ContentClient) -> None:
    data = b"x" * 1000
    wrong = sha(b"y")
    with pytest.raises(FailedPrecondition, match=f"unexpected commit digest {sha(data)}, expected {wrong}"):
        await client.write_blob("e", "wrong", data, expected=wrong)
    with pytest.raises(FailedPrecondition, match='"short" failed size validation: 1000 != 2000'):
        await client.write_blob("e", "short", data, total=2000)
    with pytest.raises(InvalidArgument, match="invalid checksum digest"):
        await client.write_blob("e", "bad", data, expected="sha256:nothex")
    with pytest.raises(InvalidArgument):
        await client.info("e", "notadigest")
    assert await client.list("e") == []
    with pytest.raises(NotFound):
        await client.info("e", sha(data))
    # a path-like ref is a name, never a path
    d = await client.write_blob("e", "../../x", data)
    assert d == sha(data)
    assert [s.ref for s in await client.list_statuses("e")] == ["wrong", "short"] or \
        sorted(s.ref for s in await client.list_statuses("e")) == ["short", "wrong"]
    await client.abort("e", "wrong")
    await client.abort("e", "short")
    await client.delete("e", d)
    assert not await client.namespace_held("e")


async def test_shared_policy_and_isolation(client: ContentClient, content_service: ContentProcs) -> None:
    data = os.urandom(100_000)
    d = await client.write_blob("a", "one", data, expected=sha(data), total=len(data))
    assert await client.list("b") == []
    w = await client.writer("b", "two", total=len(data), expected=d)
    async with w:
        assert w.session.shared and w.session.offset == len(data)
        info = await w.commit(len(data), d, {"k": "v"})
    assert info.labels == {"k": "v"}
    assert [i.digest for i in await client.list("b")] == [d]
    with pytest.raises(AlreadyExists, match=f"content {d}: already exists"):
        await client.writer("b", "three", expected=d)
    blobs = list((content_service.base / "root" / "content" / "blobs" / "sha256").iterdir())
    assert [p.name for p in blobs] == [d.split(":")[1]]
    await client.delete("a", d)
    assert await client.read_all("b", d) == data  # still b's
    await client.delete("b", d)
    assert list((content_service.base / "root" / "content" / "blobs" / "sha256").iterdir()) == []


async def test_update_filters_and_leases(client: ContentClient) -> None:
    from flotilla.libs.api.content import Info
    d1 = await client.write_blob("u", "1", b"one", labels={"x": "1", "keep": "y"}, lease="L")
    d2 = await client.write_blob("u", "2", b"two", labels={"x": "2"})
    assert [i.digest for i in await client.list("u", ["labels.x==2"])] == [d2]
    assert sorted(i.digest for i in await client.list("u", ["labels.x"])) == sorted([d1, d2])
    assert [i.digest for i in await client.list("u", [f"digest=={d1}"])] == [d1]
    info = await client.update("u", Info(d1, labels={"x": "", "new": "n"}), ["labels.x", "labels.new"])
    assert info.labels == {"keep": "y", "new": "n"}
    with pytest.raises(InvalidArgument, match='cannot update "size" field on content info'):
        await client.update("u", Info(d1), ["size"])
    assert "u" in await client.namespaces()
    assert await client.release_lease("u", "L") == 1
    assert (await client.info("u", d1)).leases == []
    assert await client.namespace_held("u")


async def test_documented_subjects_with_plain_msgpack(bus: Bus, content_service: ContentProcs) -> None:
    """What docs/subjects.md promises: msgpack maps in, {"r"} or {"e"} out."""
    p = content_service.prefix
    nc = bus.nc

    async def call(method: str, req: object) -> dict:
        msg = await nc.request(f"{p}.content.{method}", msgpack.packb(req), timeout=10)
        return msgpack.unpackb(msg.data)

    data = b"plain subjects"
    opened = (await call("writer.open", {"namespace": "raw", "ref": "r", "total": len(data),
                                         "expected": sha(data), "local": False}))["r"]
    inst, sid = opened["instance"], opened["session"]

    async def scall(method: str, req: object) -> dict:
        msg = await nc.request(f"{p}.content.i.{inst}.{method}", msgpack.packb(req), timeout=10)
        return msgpack.unpackb(msg.data)

    assert (await scall("w.write", {"session": sid, "offset": 0, "data": data}))["r"] == len(data)
    info = (await scall("w.commit", {"session": sid, "size": len(data), "expected": sha(data),
                                     "labels": {"via": "raw"}}))["r"]
    assert info["digest"] == sha(data)
    assert (await call("info", {"namespace": "raw", "digest": sha(data)}))["r"]["labels"] == {"via": "raw"}
    assert (await call("read", {"namespace": "raw", "digest": sha(data), "offset": 6, "size": -1}))["r"] == b"subjects"
    err = (await call("info", {"namespace": "raw", "digest": sha(b"none")}))["e"]
    assert err == {"code": 5, "message": f"content digest {sha(b'none')}: not found"}
    assert (await call("namespace_held", {"namespace": "raw"}))["r"] is True
    assert (await call("delete", {"namespace": "raw", "digest": sha(data)}))["r"] is None
    # a body that does not make the route's request record reaches no handler
    assert (await call("info", {"namespace": 1, "digest": sha(data)}))["e"]["code"] == InvalidArgument.code
    assert (await scall("w.sync", {"session": sid}))["e"]["code"] == InvalidArgument.code


def test_the_contract_names_its_subjects_by_route_or_by_name() -> None:
    """deploy/credentials.py grants by ``subject(prefix, c.INFO)``, ``"ping"`` and
    ``instance_subject(prefix, "*", ">")``; the service serves the routes on the same."""
    from flotilla.libs.api import content as c
    assert c.subject("p", c.INFO) == "p.content.info" == c.subject("p", "info")
    assert c.subject("p", c.WRITER_OPEN) == f"{c.stem('p')}.writer.open"
    assert c.instance_subject("p", "*", ">") == "p.content.i.*.>"
    assert c.instance_subject("p", "i1", c.W_WRITE) == f"{c.instance_stem('p', 'i1')}.w.write"
    reads = {c.INFO, c.LIST, c.UPDATE, c.READ, c.LOCAL_PATH, c.STATUS, c.LIST_STATUSES, c.NAMESPACE_HELD,
             c.NAMESPACES}
    changes = {c.DELETE, c.ABORT, c.RELEASE_LEASE, c.WRITER_OPEN,
               c.W_STATUS, c.W_WRITE, c.W_SYNC, c.W_TRUNCATE, c.W_COMMIT, c.W_CLOSE}
    assert all(r.idempotent for r in reads) and not any(r.idempotent for r in changes)


async def test_several_instances_on_one_store(bus: Bus, content_procs: ContentProcs) -> None:
    import asyncio

    from flotilla.libs.errors import Unavailable
    from flotilla.services.content.verify import verify
    content_procs.start()
    content_procs.start()
    c = ContentClient(bus, content_procs.prefix, local=False)
    blobs = [os.urandom(300_000 + i) for i in range(6)]
    twin = os.urandom(2 << 20)
    jobs = [c.write_blob("multi", f"b{i}", b, expected=sha(b)) for i, b in enumerate(blobs)]
    jobs += [c.write_blob("multi", f"twin{i}", twin) for i in range(4)]
    jobs += [c.write_blob("other", f"twin{i}", twin) for i in range(2)]
    got = await asyncio.gather(*jobs, return_exceptions=True)
    # a twin may meet its sibling holding nothing but a different ref: all must succeed
    assert got == [sha(b) for b in blobs] + [sha(twin)] * 6
    assert sorted(i.digest for i in await c.list("multi")) == sorted({sha(b) for b in blobs} | {sha(twin)})
    # the same ref from two callers: whichever instance answers, one is refused
    first = await c.writer("multi", "contended")
    refused = 0
    for _ in range(4):
        try:
            w = await c.writer("multi", "contended")
            await w.close()
        except Unavailable:
            refused += 1
    assert refused == 4
    await first.close()
    # deletes racing commits of the same digest keep the store consistent
    await asyncio.gather(c.delete("other", sha(twin)), c.write_blob("third", "t", twin), c.delete("multi", sha(twin)))
    assert await c.read_all("third", sha(twin)) == twin
    report = verify(content_procs.base / "root")
    assert report == {"corrupted": [], "orphaned": [], "missing": []}


async def test_a_local_writer_carries_its_bytes_over_to_the_next_instances_file(
        bus: Bus, content_procs: ContentProcs) -> None:
    """The service dies between a local writer's bytes and its commit, and the instance that
    opens the ingest again finds another data file (a new inode) or a shorter one: the
    writer copies what the new file lacks from the file it still holds, or fails clearly
    (DataLoss), never at the commit's size check with the client's bytes gone."""
    from flotilla.libs.errors import DataLoss
    from flotilla.services.content.ingest import ingest_dir

    first = content_procs.start()
    c = ContentClient(bus, content_procs.prefix, local=True, timeout=30)
    ingests = content_procs.base / "root" / "content" / "ingest"
    data = os.urandom(3 << 20)

    async def written(ref: str) -> object:
        w = await c.writer("carry", ref, len(data), sha(data))
        assert w.local
        for i in range(0, len(data), 1 << 20):
            await w.write(data[i:i + (1 << 20)])
        await w.flush()
        return w

    # another inode: the data file the writer wrote is no longer in the ingest
    w = await written("moved")
    content_procs.kill(first)
    data_file = ingest_dir(ingests, "carry", "moved") / "data"
    os.rename(data_file, data_file.with_name("elsewhere"))
    second = content_procs.start()
    info = await w.commit(len(data), sha(data))
    await w.close()
    assert (info.digest, info.size) == (sha(data), len(data))
    assert await c.read_all("carry", sha(data)) == data

    # the same inode cut short: the bytes are gone, and the writer says so
    await c.delete("carry", sha(data))
    w = await written("cut")
    content_procs.kill(second)
    os.truncate(ingest_dir(ingests, "carry", "cut") / "data", 1 << 20)
    content_procs.start()
    with pytest.raises(DataLoss, match="holds 1048576 bytes, 3145728 were written"):
        await w.commit(len(data), sha(data))
    await w.close()
    assert not await c.exists("carry", sha(data))
