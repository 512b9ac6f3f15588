"""Issue 4: images, containers and leases through ctr, side by side with containerd, on
SQLite and PostgreSQL; GC through the real content service; SIGKILL under load."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pbc
from flotilla._api.containerd.api.services.containers.v1 import containers_pb2_grpc as pbc_grpc
from flotilla._api.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla._api.containerd.api.services.images.v1 import images_pb2_grpc as pbi_grpc
from flotilla._api.containerd.api.services.leases.v1 import leases_pb2 as pbl
from flotilla._api.containerd.api.services.leases.v1 import leases_pb2_grpc as pbl_grpc
from flotilla._api.containerd.api.events import image_pb2 as ev_image
from flotilla.testing import ContainerdPeer, PrivateSuite, ctr
from flotilla.testing.postgres import PostgresServer

MT = "application/vnd.oci.image.manifest.v1+json"
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_LOGTIME = re.compile(r'time="[^"]+"')


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def md(request: pytest.FixtureRequest) -> Iterator[PrivateSuite]:
    """A private suite per backend: the same tests run on SQLite and on PostgreSQL."""
    env = {}
    if request.param == "postgres":
        # a host sharing a PostgreSQL database names itself: its containers are its own
        env["FLOTILLA_DB_URL"] = request.getfixturevalue("pg").new_database()
        env["FLOTILLA_HOST_ID"] = "host1"
    with PrivateSuite(**env) as suite:
        yield suite


@pytest.fixture
def rootfs(tmp_path: Path) -> str:
    (tmp_path / "rootfs").mkdir()
    return str(tmp_path / "rootfs")


def _norm(text: str, address: str) -> str:
    return _LOGTIME.sub('time="T"', _TIME.sub("TIME", text.replace(address, "ADDRESS")))


def _same(suite: PrivateSuite, peer: ContainerdPeer, steps: list[list[str]], ns: str) -> list[str]:
    outs = []
    for step in steps:
        ours = suite.ctr(*step, namespace=ns)
        theirs = ctr(peer.address, *step, namespace=ns)
        assert (ours.returncode, _norm(ours.stdout, suite.address), _norm(ours.stderr, suite.address)) == \
               (theirs.returncode, _norm(theirs.stdout, peer.address), _norm(theirs.stderr, peer.address)), step
        outs.append(ours.stdout)
    return outs


def test_ctr_containers_match_containerd(md: PrivateSuite, containerd: ContainerdPeer, rootfs: str) -> None:
    ns = "c-" + uuid.uuid4().hex[:8]
    outs = _same(md, containerd, [
        ["containers", "create", "--rootfs", rootfs, "--label", "role=web", "one"],
        ["containers", "create", "--rootfs", rootfs, "--runtime", "io.containerd.runsc.v1", "two"],
        ["containers", "create", "--rootfs", rootfs, "one"],             # AlreadyExists
        ["containers", "create", "--rootfs", rootfs, "bad name"],        # InvalidArgument
        ["containers", "ls"],
        ["containers", "ls", "-q"],
        ["containers", "ls", "labels.role==web"],
        ["containers", "ls", "runtime.name==io.containerd.runsc.v1"],
        ["containers", "ls", "labels.role=="],                           # bad filter
        ["containers", "info", "one"],
        ["containers", "info", "nope"],
        ["containers", "label", "one", "a=b", "role="],
        ["containers", "info", "one"],
        ["containers", "rm", "one", "nope"],
        ["containers", "rm", "two"],
        ["containers", "ls"],
    ], ns)
    assert "one" in outs[4] and '"a": "b"' in outs[12]
    md.ctr("namespaces", "rm", ns)


def _image_pb(name: str, digest: str, labels: dict[str, str] | None = None) -> pbi.Image:
    img = pbi.Image(name=name, labels=labels or {})
    img.target.media_type, img.target.digest, img.target.size = MT, digest, 100
    return img


def _codes(address: str, ns: str) -> list[str]:
    """Status codes and messages of image and lease calls, sent as any gRPC client would."""
    md = [("containerd-namespace", ns)]
    out = []
    with grpc.insecure_channel(f"unix://{address}") as ch:
        images, leases = pbi_grpc.ImagesStub(ch), pbl_grpc.LeasesStub(ch)
        containers = pbc_grpc.ContainersStub(ch)
        good = "sha256:" + "1" * 64
        calls = [
            lambda: images.Create(pbi.CreateImageRequest(image=_image_pb("a:1", good)), metadata=md),
            lambda: images.Create(pbi.CreateImageRequest(image=_image_pb("a:1", good)), metadata=md),
            lambda: images.Create(pbi.CreateImageRequest(image=_image_pb("", good)), metadata=md),
            lambda: images.Create(pbi.CreateImageRequest(image=_image_pb("b:1", "sha256:12")), metadata=md),
            lambda: images.Create(pbi.CreateImageRequest(image=pbi.Image(name="c:1")), metadata=md),
            lambda: images.Update(pbi.UpdateImageRequest(image=_image_pb("a:1", good, {"x": "y"}),
                                                         update_mask={"paths": ["labels.x"]}), metadata=md),
            lambda: images.Update(pbi.UpdateImageRequest(image=_image_pb("a:1", good),
                                                         update_mask={"paths": ["name"]}), metadata=md),
            lambda: images.Update(pbi.UpdateImageRequest(image=_image_pb("zz", good)), metadata=md),
            lambda: images.Get(pbi.GetImageRequest(name="zz"), metadata=md),
            lambda: images.List(pbi.ListImagesRequest(filters=["labels.x==y"]), metadata=md),
            lambda: images.List(pbi.ListImagesRequest(filters=["name=="]), metadata=md),
            lambda: images.Get(pbi.GetImageRequest(name="a:1")),
            lambda: images.Delete(pbi.DeleteImageRequest(name="a:1", sync=True), metadata=md),
            lambda: images.Delete(pbi.DeleteImageRequest(name="a:1"), metadata=md),
            lambda: leases.Create(pbl.CreateRequest(id="l1", labels={"k": "v"}), metadata=md),
            lambda: leases.Create(pbl.CreateRequest(id="l1"), metadata=md),
            lambda: leases.AddResource(pbl.AddResourceRequest(id="l1", resource=pbl.Resource(id=good, type="content")), metadata=md),
            lambda: leases.AddResource(pbl.AddResourceRequest(id="l1", resource=pbl.Resource(id="x", type="content")), metadata=md),
            lambda: leases.AddResource(pbl.AddResourceRequest(id="l1", resource=pbl.Resource(id="x", type="snapshots")), metadata=md),
            lambda: leases.AddResource(pbl.AddResourceRequest(id="l1", resource=pbl.Resource(id="x", type="what")), metadata=md),
            lambda: leases.AddResource(pbl.AddResourceRequest(id="l9", resource=pbl.Resource(id=good, type="content")), metadata=md),
            lambda: leases.ListResources(pbl.ListResourcesRequest(id="l1"), metadata=md),
            lambda: leases.DeleteResource(pbl.DeleteResourceRequest(id="l1", resource=pbl.Resource(id=good, type="content")), metadata=md),
            lambda: leases.List(pbl.ListRequest(filters=["labels.k==v"]), metadata=md),
            lambda: leases.Delete(pbl.DeleteRequest(id="l1", sync=True), metadata=md),
            lambda: leases.Delete(pbl.DeleteRequest(id="l1"), metadata=md),
            lambda: containers.Update(pbc.UpdateContainerRequest(container=pbc.Container(id="")), metadata=md),
            lambda: containers.Get(pbc.GetContainerRequest(id="zz"), metadata=md),
            lambda: containers.Create(pbc.CreateContainerRequest(container=pbc.Container(id="c1")), metadata=md),
        ]
        for call in calls:
            try:
                res = call()
                text = "OK"
                if isinstance(res, pbi.ListImagesResponse):
                    text += " " + ",".join(i.name for i in res.images)
                elif isinstance(res, pbl.ListResourcesResponse):
                    text += " " + ",".join(f"{r.type}:{r.id}" for r in res.resources)
                elif isinstance(res, pbl.ListResponse):
                    text += " " + ",".join(x.id for x in res.leases)
                out.append(text)
            except grpc.RpcError as exc:
                out.append(f"{exc.code().name}: {exc.details()}")
    return out


def test_images_and_leases_api_match_containerd(md: PrivateSuite, containerd: ContainerdPeer) -> None:
    ns = "api-" + uuid.uuid4().hex[:8]
    ours, theirs = _codes(md.address, ns), _codes(containerd.address, ns)
    assert ours == theirs
    assert "ALREADY_EXISTS" in " ".join(ours) and "NOT_FOUND" in " ".join(ours)


def test_ctr_images_match_containerd(md: PrivateSuite, containerd: ContainerdPeer) -> None:
    ns = "i-" + uuid.uuid4().hex[:8]
    for address in (md.address, containerd.address):
        with grpc.insecure_channel(f"unix://{address}") as ch:
            stub = pbi_grpc.ImagesStub(ch)
            for name, c in (("docker.io/library/a:1", "a"), ("docker.io/library/b:1", "b")):
                stub.Create(pbi.CreateImageRequest(image=_image_pb(name, "sha256:" + c * 64)),
                            metadata=[("containerd-namespace", ns)])
    _same(md, containerd, [
        ["images", "ls", "-q"],
        ["images", "ls", "-q", "name==docker.io/library/b:1"],
        ["images", "label", "docker.io/library/a:1", "team=x"],
        ["images", "ls", "-q", "labels.team==x"],
        ["images", "label", "docker.io/library/a:1", "team="],
        ["images", "ls", "-q", "labels.team"],
        ["images", "label", "docker.io/library/zz:1", "team=x"],
        ["images", "rm", "docker.io/library/a:1", "docker.io/library/zz:1"],
        ["images", "rm", "--sync", "docker.io/library/b:1"],
        ["images", "ls", "-q"],
        ["images", "ls"],
        ["images", "check"],
    ], ns)


def test_ctr_leases_match_containerd(md: PrivateSuite, containerd: ContainerdPeer) -> None:
    ns = "l-" + uuid.uuid4().hex[:8]
    _same(md, containerd, [
        ["leases", "create", "--id", "one"],
        ["leases", "create", "--id", "two", "--expires", "1h"],
        ["leases", "create", "--id", "one"],
        ["leases", "ls"],
        ["leases", "ls", "-q"],
        ["leases", "ls", "id==two"],
        ["leases", "rm", "one"],
        ["leases", "rm", "one"],
        ["leases", "rm", "--sync", "two"],
        ["leases", "ls"],
    ], ns)
    # an expired lease is removed by the next collection, as containerd does
    for address in (md.address, containerd.address):
        with grpc.insecure_channel(f"unix://{address}") as ch:
            stub = pbl_grpc.LeasesStub(ch)
            meta = [("containerd-namespace", ns)]
            stub.Create(pbl.CreateRequest(id="old", labels={"containerd.io/gc.expire": "2001-01-01T00:00:00Z"}),
                        metadata=meta)
            stub.Create(pbl.CreateRequest(id="trigger"), metadata=meta)
    _same(md, containerd, [["leases", "ls", "-q"], ["leases", "rm", "--sync", "trigger"], ["leases", "ls", "-q"]], ns)
    assert md.ctr("leases", "ls", "-q", namespace=ns, check=True).stdout == ""
    made = md.ctr("leases", "create", namespace=ns, check=True).stdout.strip()  # a random id
    assert re.fullmatch(r"\d+-[A-Za-z0-9_=-]{4}", made)
    md.ctr("leases", "rm", made, namespace=ns, check=True)


def test_namespace_isolation(md: PrivateSuite, rootfs: str) -> None:
    a, b = "iso-a-" + uuid.uuid4().hex[:6], "iso-b-" + uuid.uuid4().hex[:6]
    md.ctr("containers", "create", "--rootfs", rootfs, "shared-name", namespace=a, check=True)
    md.ctr("leases", "create", "--id", "shared-lease", namespace=a, check=True)
    with grpc.insecure_channel(f"unix://{md.address}") as ch:
        pbi_grpc.ImagesStub(ch).Create(pbi.CreateImageRequest(image=_image_pb("img:1", "sha256:" + "c" * 64)),
                                       metadata=[("containerd-namespace", a)])
    for what in ("containers", "images", "leases"):
        assert md.ctr(what, "ls", "-q", namespace=b, check=True).stdout == ""
        assert md.ctr(what, "ls", "-q", namespace=a, check=True).stdout != ""
    assert "not found" in md.ctr("containers", "info", "shared-name", namespace=b).stderr
    # the same names live independently in b
    md.ctr("containers", "create", "--rootfs", rootfs, "shared-name", namespace=b, check=True)
    md.ctr("containers", "rm", "shared-name", namespace=b, check=True)
    assert md.ctr("containers", "ls", "-q", namespace=a, check=True).stdout.split() == ["shared-name"]
    res = md.ctr("namespaces", "rm", a)
    assert res.returncode == 1 and 'must be empty, but it still has images, containers' in res.stderr
    md.ctr("containers", "rm", "shared-name", namespace=a, check=True)
    md.ctr("images", "rm", "img:1", namespace=a, check=True)
    md.ctr("namespaces", "rm", a, check=True)
    assert md.ctr("leases", "ls", "-q", namespace=a, check=True).stdout == ""  # went with the namespace


def test_image_events_carry_containerd_payloads(md: PrivateSuite) -> None:
    ns = "ev-" + uuid.uuid4().hex[:6]
    with grpc.insecure_channel(f"unix://{md.address}") as ch:
        stream = events_pb2_grpc.EventsStub(ch).Subscribe(
            events_pb2.SubscribeRequest(filters=[f'namespace=={ns},topic~="^/images/"']), timeout=30)
        got: list[events_pb2.Envelope] = []
        reader = threading.Thread(target=lambda: got.extend(e for _, e in zip(range(2), stream)), daemon=True)
        reader.start()
        images = pbi_grpc.ImagesStub(ch)
        n = 0
        deadline = time.monotonic() + 20
        while reader.is_alive() and time.monotonic() < deadline:  # until the subscription is live
            name = f"img-{n}:1"
            images.Create(pbi.CreateImageRequest(image=_image_pb(name, "sha256:" + "d" * 64, {"k": "v"})),
                          metadata=[("containerd-namespace", ns)])
            images.Delete(pbi.DeleteImageRequest(name=name), metadata=[("containerd-namespace", ns)])
            n += 1
            reader.join(0.2)
        stream.cancel()
    assert [e.topic for e in got] == ["/images/create", "/images/delete"]
    assert got[0].event.type_url == "containerd.services.images.v1.ImageCreate"  # containerd 1.6 files them there
    created = ev_image.ImageCreate.FromString(got[0].event.value)
    assert created.labels == {"k": "v"} and created.name.startswith("img-")
    assert ev_image.ImageDelete.FromString(got[1].event.value).name == created.name


def _ingest(address: str, ns: str, data: bytes, ref: str) -> None:
    res = subprocess.run(["ctr", "--address", address, "--namespace", ns, "content", "ingest", ref],
                         input=data, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr


def _gc_fixture(address: str, ns: str) -> dict[str, object]:
    """Two images sharing a layer, their snapshots (one shared parent), an orphan snapshot,
    and a blob held only by a lease: all made through containerd's API with ctr."""
    from flotilla.testing.images import Entry, build_image, busybox_entries
    a = build_image([busybox_entries(), [Entry("only-a", data=b"a\n")]])
    b = build_image([busybox_entries(), [Entry("only-b", data=b"b\n")]])
    held = (ns * 1000).encode()[:4096]  # the same bytes on both sides
    md = [("containerd-namespace", ns)]
    ctr(address, "leases", "create", "--id", "hold", namespace=ns, check=True)
    ctr(address, "leases", "create", "--id", "setup", namespace=ns, check=True)
    blobs = {x.digest: x for x in a.blobs() + b.blobs()}
    from flotilla.testing.images import sha256
    with grpc.insecure_channel(f"unix://{address}") as ch:
        leases = pbl_grpc.LeasesStub(ch)
        # everything is held by the "setup" lease until the images reference it
        for digest in blobs:
            leases.AddResource(pbl.AddResourceRequest(id="setup", resource=pbl.Resource(id=digest, type="content")), metadata=md)
        for key in ("k-base", "base", "k-a", "snap-a", "k-b", "snap-b"):
            leases.AddResource(pbl.AddResourceRequest(id="setup", resource=pbl.Resource(id=key, type="snapshots/overlayfs")), metadata=md)
        leases.AddResource(pbl.AddResourceRequest(id="hold", resource=pbl.Resource(id=sha256(held), type="content")), metadata=md)
        for i, (digest, blob) in enumerate(blobs.items()):
            _ingest(address, ns, blob.data, f"gc-{i}")
        _ingest(address, ns, held, "gc-held")
        # as a pull does: written with the lease in the request's metadata, no explicit resource
        from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbct
        from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbct_grpc
        pulled = held[::-1] + b"pulled"
        list(pbct_grpc.ContentStub(ch).Write(iter([pbct.WriteContentRequest(
            action=pbct.COMMIT, ref="gc-pulled", total=len(pulled), expected=sha256(pulled), data=pulled)]),
            metadata=md + [("containerd-lease", "hold")]))
        for img, snap in ((a, "snap-a"), (b, "snap-b")):
            refs = [f"containerd.io/gc.ref.content.config={img.config.digest}"] + \
                   [f"containerd.io/gc.ref.content.l.{i}={layer.digest}" for i, layer in enumerate(img.layers)]
            ctr(address, "content", "label", img.manifest.digest, *refs, namespace=ns, check=True)
            ctr(address, "content", "label", img.config.digest, f"containerd.io/gc.ref.snapshot.overlayfs={snap}",
                namespace=ns, check=True)
        for key, name, parent in (("k-base", "base", ""), ("k-a", "snap-a", "base"), ("k-b", "snap-b", "base"),
                                  ("k-orphan", "orphan", "base")):
            ctr(address, "snapshots", "prepare", key, *([parent] if parent else []), namespace=ns, check=True)
            ctr(address, "snapshots", "commit", name, key, namespace=ns, check=True)
            # ctr makes every snapshot a GC root; these must live by their references only
            ctr(address, "snapshots", "label", name, "containerd.io/gc.root=", namespace=ns, check=True)
        images = pbi_grpc.ImagesStub(ch)
        for name, img in (("gc/a:1", a), ("gc/b:1", b)):
            pb_img = pbi.Image(name=name)
            pb_img.target.media_type, pb_img.target.digest = img.manifest.media_type, img.manifest.digest
            pb_img.target.size = len(img.manifest.data)
            images.Create(pbi.CreateImageRequest(image=pb_img), metadata=md)
        leases.Delete(pbl.DeleteRequest(id="setup", sync=True), metadata=md)
    return {"a": a, "b": b, "held": sha256(held), "pulled": sha256(pulled)}


def _state_snapshots(address: str, ns: str) -> list[str]:
    return sorted(line.split()[0] for line in ctr(address, "snapshots", "ls", namespace=ns, check=True)
                  .stdout.splitlines()[1:])


def _state(address: str, ns: str) -> tuple[list[str], list[str]]:
    content = sorted(ctr(address, "content", "ls", "-q", namespace=ns, check=True).stdout.split())
    return content, _state_snapshots(address, ns)


def test_gc_after_image_rm_sync_matches_containerd(md: PrivateSuite, containerd: ContainerdPeer) -> None:
    ns = "gc-" + uuid.uuid4().hex[:8]
    made = {}
    for address in (md.address, containerd.address):
        made[address] = _gc_fixture(address, ns)
    a, b, held = made[md.address]["a"], made[md.address]["b"], made[md.address]["held"]
    pulled = made[md.address]["pulled"]
    # "orphan" is nobody's: the collection after "setup" ended took it, on both sides
    assert _state(md.address, ns) == _state(containerd.address, ns)
    assert _state(md.address, ns)[1] == ["base", "snap-a", "snap-b"]
    _same(md, containerd, [["images", "ls"], ["images", "check"]], ns)
    # a namespace holding images, blobs and snapshots is refused with containerd's message
    _same(md, containerd, [["namespaces", "rm", ns]], "default")

    blob_dir = md.suite.root / "content" / "blobs" / "sha256"
    on_disk = lambda digest: (blob_dir / digest.split(":")[1]).exists()  # noqa: E731
    assert all(on_disk(x.digest) for x in a.blobs())  # type: ignore[attr-defined]

    _same(md, containerd, [["images", "rm", "--sync", "gc/a:1"]], ns)
    content, snaps = _state(md.address, ns)
    assert (content, snaps) == _state(containerd.address, ns)
    only_a = {a.manifest.digest, a.config.digest, a.layers[1].digest}  # type: ignore[attr-defined]
    assert not only_a & set(content) and not any(on_disk(d) for d in only_a)
    kept = {x.digest for x in b.blobs()} | {held, pulled}  # type: ignore[attr-defined]
    assert kept == set(content) and all(on_disk(d) for d in kept)
    assert snaps == ["base", "snap-b"]  # snap-a went, its parent stays for snap-b

    _same(md, containerd, [["leases", "rm", "--sync", "hold"]], ns)
    content, _ = _state(md.address, ns)
    assert content == _state(containerd.address, ns)[0]
    assert held not in content and pulled not in content and not on_disk(held) and not on_disk(pulled)
    _same(md, containerd, [["images", "rm", "--sync", "gc/b:1"]], ns)
    assert _state(md.address, ns) == _state(containerd.address, ns) == ([], [])
    _same(md, containerd, [["namespaces", "rm", ns]], "default")


def test_a_collection_while_content_is_down_sweeps_no_snapshot(md: PrivateSuite) -> None:
    """An image's snapshots are reachable only through its config blob's labels: a collection
    that cannot list the content store (stopped here; killed, in the chaos test that found
    it) must not take them, nor any blob; the next one, content back, collects as before."""
    ns = "gc-down-" + uuid.uuid4().hex[:8]
    _gc_fixture(md.address, ns)
    content, snaps = _state(md.address, ns)
    assert snaps == ["base", "snap-a", "snap-b"]
    stopped = md.suite.ctl("stop", "content")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    try:
        # a metadata-only delete, and a synchronous collection with content not answering
        ctr(md.address, "images", "rm", "--sync", "gc/a:1", namespace=ns, check=True, timeout=120)
        assert _state_snapshots(md.address, ns) == ["base", "snap-a", "snap-b"]
    finally:
        md.suite.ctl("start", "content")
    deadline = time.monotonic() + 30
    while ctr(md.address, "content", "ls", "-q", namespace=ns).returncode != 0:
        assert time.monotonic() < deadline, "content did not come back"
        time.sleep(0.2)
    assert sorted(ctr(md.address, "content", "ls", "-q", namespace=ns, check=True).stdout.split()) == content
    # content back: image a's blobs and snapshot go with the next collection
    ctr(md.address, "images", "rm", "--sync", "gc/b:1", namespace=ns, check=True, timeout=120)
    ctr(md.address, "leases", "rm", "--sync", "hold", namespace=ns, check=True, timeout=120)
    assert _state(md.address, ns) == ([], [])
    ctr(md.address, "namespaces", "rm", ns, check=True)


def _kill_metadata(suite: PrivateSuite) -> None:
    pid = suite.suite.program_pid("metadata")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # supervisord starts a new one
        try:
            if suite.suite.program_pid("metadata") not in (0, pid):
                return
        except ValueError:
            pass
        time.sleep(0.1)
    pytest.fail("metadata was not restarted")


@pytest.mark.slow
def test_sigkill_under_concurrent_writes_loses_no_acknowledged_call(md: PrivateSuite, stress: int) -> None:
    ns = "kill-" + uuid.uuid4().hex[:8]
    meta = [("containerd-namespace", ns)]
    known: dict[str, bool] = {}      # id -> present, for calls that answered success
    updated: set[str] = set()        # ids whose full replace answered success
    unsure: set[str] = set()         # calls that failed: either outcome is allowed
    lock = threading.Lock()
    stop = threading.Event()
    spec = b'{"ociVersion":"1.0.2","marker":"%s"}'

    def worker(t: int) -> None:
        with grpc.insecure_channel(f"unix://{md.address}") as ch:
            stub = pbc_grpc.ContainersStub(ch)
            made: list[str] = []
            i = 0
            while not stop.is_set():
                cid = f"w{t}-{i}"
                c = pbc.Container(id=cid, labels={"i": str(i)})
                c.runtime.name = "io.containerd.runc.v2"
                c.spec.type_url, c.spec.value = "types.containerd.io/opencontainers/runtime-spec/1/Spec", spec % cid.encode()
                try:
                    stub.Create(pbc.CreateContainerRequest(container=c), metadata=meta, timeout=8)
                    with lock:
                        known[cid] = True
                    made.append(cid)
                except grpc.RpcError:
                    with lock:
                        unsure.add(cid)
                if i % 3 == 1 and made:
                    # a full replace changes labels, image and spec at once: after a crash
                    # the record must show all of the old or all of the new
                    target = made[-1]
                    u = pbc.Container(id=target, labels={"i": target.split("-")[1], "gen": "2"},
                                      image=f"gen2/{target}")
                    u.runtime.name = "io.containerd.runc.v2"
                    u.spec.type_url, u.spec.value = c.spec.type_url, spec % f"{target}/gen2".encode()
                    try:
                        stub.Update(pbc.UpdateContainerRequest(container=u), metadata=meta, timeout=8)
                        with lock:
                            updated.add(target)
                    except grpc.RpcError:
                        with lock:
                            unsure.add(target)
                if i % 3 == 2 and made:
                    victim = made.pop(0)
                    try:
                        stub.Delete(pbc.DeleteContainerRequest(id=victim), metadata=meta, timeout=8)
                        with lock:
                            known[victim] = False
                    except grpc.RpcError:
                        with lock:
                            unsure.add(victim)
                i += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3 * stress):
            time.sleep(0.7)
            _kill_metadata(md)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    md.suite.wait_ready(30)
    with grpc.insecure_channel(f"unix://{md.address}") as ch:
        listed = {c.id: c for c in pbc_grpc.ContainersStub(ch).List(
            pbc.ListContainersRequest(), metadata=meta, timeout=30).containers}
    settled = {cid: present for cid, present in known.items() if cid not in unsure}
    assert sum(settled.values()) > 10, "too few calls succeeded to show anything"
    assert [c for c, present in settled.items() if present and c not in listed] == []
    assert [c for c, present in settled.items() if not present and c in listed] == []
    for cid, c in listed.items():  # whole records, never a mix of old and new
        assert c.labels["i"] == cid.split("-")[1]
        if c.labels.get("gen") == "2":
            assert (c.image, c.spec.value) == (f"gen2/{cid}", spec % f"{cid}/gen2".encode())
        else:
            assert (c.image, c.spec.value) == ("", spec % cid.encode()) and cid not in updated - unsure
    # the database itself passes its integrity check
    from flotilla.services.metadata.store import MetadataStore
    url = md.suite.extra_env.get("FLOTILLA_DB_URL") or f"sqlite:///{md.suite.root / 'metadata' / 'meta.db'}"
    store = MetadataStore.open(url)
    try:
        assert store.check_integrity() == []
    finally:
        store.engine.dispose()
    with grpc.insecure_channel(f"unix://{md.address}") as ch:
        stub = pbc_grpc.ContainersStub(ch)
        for cid in listed:
            stub.Delete(pbc.DeleteContainerRequest(id=cid), metadata=meta, timeout=30)


def test_container_events_carry_containerd_payloads(md: PrivateSuite, rootfs: str) -> None:
    from flotilla._api.containerd.api.events import container_pb2 as ev_container
    ns = "cev-" + uuid.uuid4().hex[:6]
    with grpc.insecure_channel(f"unix://{md.address}") as ch:
        stream = events_pb2_grpc.EventsStub(ch).Subscribe(
            events_pb2.SubscribeRequest(filters=[f'namespace=={ns},topic~="^/containers/"']), timeout=30)
        got: list[events_pb2.Envelope] = []
        reader = threading.Thread(target=lambda: got.extend(e for _, e in zip(range(3), stream)), daemon=True)
        reader.start()
        n = 0
        deadline = time.monotonic() + 20
        while reader.is_alive() and time.monotonic() < deadline:  # until the subscription is live
            cid = f"ev{n}"
            md.ctr("containers", "create", "--rootfs", rootfs, cid, namespace=ns, check=True)
            md.ctr("containers", "label", cid, "k=v", namespace=ns, check=True)
            md.ctr("containers", "rm", cid, namespace=ns, check=True)
            n += 1
            reader.join(0.2)
        stream.cancel()
    assert [e.topic for e in got] == ["/containers/create", "/containers/update", "/containers/delete"]
    created = ev_container.ContainerCreate.FromString(got[0].event.value)
    assert created.runtime.name == "io.containerd.runc.v2"
    assert created.runtime.options.type_url == "containerd.runc.v1.Options"
    updated = ev_container.ContainerUpdate.FromString(got[1].event.value)
    assert updated.id == created.id and updated.labels == {"k": "v"}
    assert ev_container.ContainerDelete.FromString(got[2].event.value).id == created.id


def _oci_archive(path: Path, image: object, name: str) -> str:
    """An OCI image layout tarball of ``image`` named ``name``, for ``ctr images import``."""
    import io
    import json
    import tarfile
    with tarfile.open(path, "w") as tar:
        def add(member: str, data: bytes) -> None:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for blob in image.blobs():  # type: ignore[attr-defined]
            add("blobs/sha256/" + blob.digest.split(":")[1], blob.data)
        manifest = image.manifest.descriptor(annotations={"io.containerd.image.name": name})  # type: ignore[attr-defined]
        add("index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode())
    return str(path)


def test_imported_images_containers_and_gc_match_containerd(md: PrivateSuite, containerd: ContainerdPeer,
                                                              tmp_path: Path) -> None:
    """The whole path with real images: import (content, unpack to snapshots), a container
    from an image, and `image rm --sync` collecting blobs and unpacked snapshots that nothing
    else references, exactly as containerd does."""
    from flotilla.testing.images import Entry, build_image, busybox_entries
    base = build_image([busybox_entries()])
    child = build_image([busybox_entries(), [Entry("extra", data=b"extra\n")]])
    assert base.layers[0].digest == child.layers[0].digest  # the layer both share
    tars = [_oci_archive(tmp_path / "base.tar", base, "docker.io/library/base:1"),
            _oci_archive(tmp_path / "child.tar", child, "docker.io/library/child:1")]
    ns = "imp-" + uuid.uuid4().hex[:8]
    _same(md, containerd, [
        ["images", "import", tars[0]],
        ["images", "import", tars[1]],
        ["images", "ls"],
        ["images", "check"],
        ["containers", "create", "docker.io/library/child:1", "c1"],
        ["containers", "info", "c1"],
        ["containers", "ls"],
        ["snapshots", "ls"],
        ["images", "rm", "--sync", "docker.io/library/child:1"],
        ["content", "ls", "-q"],
        ["snapshots", "ls"],            # c1's snapshot keeps the child's layer chain
        ["containers", "rm", "c1"],
        ["leases", "rm", "--sync", "nothing"],  # NotFound; containerd's scheduler runs on deletes too
        ["images", "rm", "--sync", "docker.io/library/base:1"],
        ["images", "ls", "-q"],
        ["content", "ls", "-q"],
        ["snapshots", "ls"],
        ["namespaces", "rm", ns],
    ], ns)
    content, snaps = _state(md.address, ns)
    assert (content, snaps) == ([], [])
    blob_dir = md.suite.root / "content" / "blobs" / "sha256"
    for blob in base.blobs() + child.blobs():
        assert not (blob_dir / blob.digest.split(":")[1]).exists(), blob.digest


async def test_gateway_gets_follow_changes_made_past_it(suite: PrivateSuite) -> None:
    """The gateway answers a repeated Containers/Images/Namespaces.Get itself
    (services/gateway/records.py), yet sees an update and a delete made by another caller
    of the metadata service (another gateway) as soon as its event crosses the bus: well
    within the cache's TTL. Ask twice first, and the service is asked once."""
    import asyncio

    from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2 as pbn
    from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2_grpc as pbn_grpc
    from flotilla.libs.api.metadata import Container, Descriptor, Image, MetadataClient, Namespace, Runtime
    from tests.integration.records_kit import count_requests, not_found, soon

    ns = "rec-" + uuid.uuid4().hex[:8]
    md = [("containerd-namespace", ns)]
    bus = await suite.bus("elsewhere")
    elsewhere = MetadataClient(bus, suite.suite.prefix)
    asked = await count_requests(bus, f"{suite.suite.prefix}.metadata.*.get")
    try:
        with grpc.insecure_channel(f"unix://{suite.address}") as ch:
            containers, images = pbc_grpc.ContainersStub(ch), pbi_grpc.ImagesStub(ch)
            namespaces = pbn_grpc.NamespacesStub(ch)
            spec = pbc.Container(id="c1", runtime=pbc.Container.Runtime(name="io.containerd.runc.v2"))
            spec.spec.type_url, spec.spec.value = "types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}"
            containers.Create(pbc.CreateContainerRequest(container=spec), metadata=md)
            image = pbi.Image(name="i1")
            image.target.media_type, image.target.digest, image.target.size = (
                "application/vnd.oci.image.manifest.v1+json", "sha256:" + "1" * 64, 1)
            images.Create(pbi.CreateImageRequest(image=image), metadata=md)

            def container() -> pbc.Container:
                return containers.Get(pbc.GetContainerRequest(id="c1"), metadata=md).container

            def img() -> pbi.Image:
                return images.Get(pbi.GetImageRequest(name="i1"), metadata=md).image

            def namespace() -> pbn.Namespace:
                return namespaces.Get(pbn.GetNamespaceRequest(name=ns)).namespace

            for _ in range(2):
                await asyncio.to_thread(container)
                await asyncio.to_thread(img)
                await asyncio.to_thread(namespace)
            await bus.nc.flush()
            # what Create answered was kept; the namespace was asked once
            assert asked == {f"{suite.suite.prefix}.metadata.namespaces.get": 1}, asked

            await elsewhere.update_container(ns, Container(id="c1", runtime=Runtime("io.containerd.runc.v2"),
                                                           labels={"seen": "elsewhere"}), ["labels.seen"])
            await elsewhere.update_image(ns, Image(name="i1", labels={"seen": "elsewhere"},
                                                   target=Descriptor("", "", 0)), ["labels.seen"])
            await elsewhere.update_namespace(Namespace(ns, {"seen": "elsewhere"}), ["labels.seen"])
            await asyncio.to_thread(soon, lambda: dict(container().labels) == {"seen": "elsewhere"})
            await asyncio.to_thread(soon, lambda: dict(img().labels) == {"seen": "elsewhere"})
            await asyncio.to_thread(soon, lambda: dict(namespace().labels) == {"seen": "elsewhere"})

            await elsewhere.delete_container(ns, "c1")
            await elsewhere.delete_image(ns, "i1")
            await asyncio.to_thread(soon, lambda: not_found(container))
            await asyncio.to_thread(soon, lambda: not_found(img))
            await elsewhere.delete_namespace(ns)
            # as containerd's, a Get of a namespace that is not there answers its name, no labels
            await asyncio.to_thread(soon, lambda: dict(namespace().labels) == {})
    finally:
        await bus.close()
