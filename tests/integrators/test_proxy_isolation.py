"""Issue 27: a consumer sending malformed requests on its socket gets containerd's status
codes (side by side with containerd's own Content and Snapshots services), and no request
of one consumer touches another consumer's blobs, labels, ingests or snapshots."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbc_grpc
from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla._api.containerd.api.services.images.v1 import images_pb2_grpc as pbi_grpc
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2 as pbs
from flotilla._api.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc as pbs_grpc
from flotilla.testing import PrivateSuite
from flotilla.testing.peers import ContainerdPeer

from .helpers import NAMESPACE_PREFIX, SNAPSHOTTER, blob_file, consumer_socket

UNKNOWN = "sha256:" + "0" * 64


class Api:
    """containerd's Content and Snapshots APIs on one socket, as one caller."""

    def __init__(self, address: str, namespace: str = "", snapshotter: str = SNAPSHOTTER) -> None:
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.content = pbc_grpc.ContentStub(self.channel)
        self.snapshots = pbs_grpc.SnapshotsStub(self.channel)
        self.md = [("containerd-namespace", namespace)] if namespace else []
        self.sn = snapshotter

    def code(self, call: Callable[[], Any]) -> str:
        """``OK`` or the status code's name (a streaming answer is read to its end)."""
        try:
            answer = call()
            if not hasattr(answer, "ListFields"):
                list(answer)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name

    def write(self, ref: str, data: bytes, commit: bool = True, expected: str = "",
              labels: dict[str, str] | None = None) -> list[pbc.WriteContentResponse]:
        reqs = [pbc.WriteContentRequest(action=pbc.WRITE, ref=ref, offset=0, data=data)]
        if commit:
            reqs.append(pbc.WriteContentRequest(action=pbc.COMMIT, ref=ref, offset=len(data), total=len(data),
                                                expected=expected, labels=labels or {}))
        return list(self.content.Write(iter(reqs), metadata=self.md))

    def info(self, digest: str) -> pbc.Info:
        return self.content.Info(pbc.InfoRequest(digest=digest), metadata=self.md).info

    def status(self, ref: str) -> pbc.Status:
        return self.content.Status(pbc.StatusRequest(ref=ref), metadata=self.md).status

    def read(self, digest: str) -> bytes:
        return b"".join(r.data for r in self.content.Read(pbc.ReadContentRequest(digest=digest), metadata=self.md))

    def close(self) -> None:
        self.channel.close()


def malformed(api: Api, escape: str) -> dict[str, Callable[[], Any]]:
    """Bad digests, unknown and path-like refs and keys, and a wrong expected digest;
    ``escape`` is a path a path-like ref would write if it were taken as one."""
    c, s, md, sn = api.content, api.snapshots, api.md, api.sn
    return {
        "Write path-like ref": lambda: api.write("../../../../../../.." + escape, b"x"),
        "Info bad digest": lambda: c.Info(pbc.InfoRequest(digest="sha256:zz"), metadata=md),
        "Info empty digest": lambda: c.Info(pbc.InfoRequest(digest=""), metadata=md),
        "Info unknown": lambda: c.Info(pbc.InfoRequest(digest=UNKNOWN), metadata=md),
        "Read bad algorithm": lambda: c.Read(pbc.ReadContentRequest(digest="md5:abc"), metadata=md),
        "Read unknown": lambda: c.Read(pbc.ReadContentRequest(digest=UNKNOWN), metadata=md),
        "Delete path-like digest": lambda: c.Delete(pbc.DeleteContentRequest(digest="sha256:../../etc"), metadata=md),
        "Delete unknown": lambda: c.Delete(pbc.DeleteContentRequest(digest=UNKNOWN), metadata=md),
        "Update unknown": lambda: c.Update(pbc.UpdateRequest(info=pbc.Info(digest=UNKNOWN, labels={"a": "b"})),
                                           metadata=md),
        "Status unknown ref": lambda: c.Status(pbc.StatusRequest(ref="nope"), metadata=md),
        "Status path-like ref": lambda: c.Status(pbc.StatusRequest(ref="../../../etc/passwd"), metadata=md),
        "Abort path-like ref": lambda: c.Abort(pbc.AbortRequest(ref="../../x"), metadata=md),
        "Write without ref": lambda: api.write("", b"x"),
        "Write wrong expected digest": lambda: api.write(f"wrong-{uuid.uuid4().hex}", b"y", expected=UNKNOWN),
        "Snapshots.Stat unknown": lambda: s.Stat(pbs.StatSnapshotRequest(snapshotter=sn, key="nope"), metadata=md),
        "Snapshots.Remove unknown": lambda: s.Remove(pbs.RemoveSnapshotRequest(snapshotter=sn, key="nope"),
                                                     metadata=md),
        "Snapshots.Prepare unknown parent": lambda: s.Prepare(
            pbs.PrepareSnapshotRequest(snapshotter=sn, key="k1", parent="../nope"), metadata=md),
        "Snapshots.Mounts unknown": lambda: s.Mounts(pbs.MountsRequest(snapshotter=sn, key="../nope"), metadata=md),
        "Snapshots.Commit unknown": lambda: s.Commit(
            pbs.CommitSnapshotRequest(snapshotter=sn, name="n", key="nope"), metadata=md),
        "Snapshots unknown snapshotter": lambda: s.Stat(pbs.StatSnapshotRequest(snapshotter="nope", key="x"),
                                                        metadata=md),
    }


@pytest.fixture
def consumers(proxy_suite: PrivateSuite) -> Iterator[tuple[Api, Api]]:
    x, y = Api(str(consumer_socket(proxy_suite, "x"))), Api(str(consumer_socket(proxy_suite, "y")))
    yield x, y
    x.close()
    y.close()


def test_malformed_requests_get_containerds_codes(proxy_suite: PrivateSuite, consumers: tuple[Api, Api]) -> None:
    x, _ = consumers
    escape = f"/tmp/flotilla-escaped-{uuid.uuid4().hex}"
    with ContainerdPeer() as peer:  # containerd's own services, its built-in stores
        reference = Api(peer.address, "default", "overlayfs")
        try:
            theirs = {name: reference.code(call) for name, call in malformed(reference, escape + "-c").items()}
        finally:
            reference.close()
    try:
        ours = {name: x.code(call) for name, call in malformed(x, escape).items()}
    finally:  # what the writes left in x's store
        for st in x.content.ListStatuses(pbc.ListStatusesRequest()).statuses:
            x.content.Abort(pbc.AbortRequest(ref=st.ref))
        for listed in x.content.List(pbc.ListContentRequest()):
            for info in listed.info:
                x.content.Delete(pbc.DeleteContentRequest(digest=info.digest))
    assert ours == theirs
    assert not os.path.exists(escape) and not os.path.exists(escape + "-c")
    assert theirs["Info unknown"] == "NOT_FOUND" and theirs["Info bad digest"] == "INVALID_ARGUMENT"
    # nothing but containerd's Content and Snapshots is served to a consumer
    with pytest.raises(grpc.RpcError) as err:
        pbi_grpc.ImagesStub(x.channel).List(pbi.ListImagesRequest(), metadata=[("containerd-namespace", "default")])
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_one_consumer_cannot_touch_anothers_blobs_ingests_or_snapshots(proxy_suite: PrivateSuite,
                                                                       consumers: tuple[Api, Api]) -> None:
    x, y = consumers
    flotilla = Api(proxy_suite.address, NAMESPACE_PREFIX + "y", "overlayfs")  # Flotilla's own socket
    data = b"y's blob " + uuid.uuid4().bytes
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    held, key = f"held-{uuid.uuid4().hex}", f"default/1/k-{uuid.uuid4().hex}"
    try:
        y.write(f"blob-{uuid.uuid4().hex}", data, labels={"containerd.io/gc.root": "y"})
        y.write(held, b"half of it", commit=False)  # an ingest y will resume
        y.snapshots.Prepare(pbs.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=key))
        assert y.status(held).offset == 10

        # x names them all, also as path-like refs and keys, and with y's namespace header
        spoof = Api(str(consumer_socket(proxy_suite, "x")), NAMESPACE_PREFIX + "y")
        try:
            for api in (x, spoof):
                c, s, md = api.content, api.snapshots, api.md
                for ref in (held, f"../{held}", f"{NAMESPACE_PREFIX}y/{held}", f"../../ingest/{held}"):
                    assert api.code(lambda: c.Status(pbc.StatusRequest(ref=ref), metadata=md)) == "NOT_FOUND"
                    assert api.code(lambda: c.Abort(pbc.AbortRequest(ref=ref), metadata=md)) == "NOT_FOUND"
                statuses = c.ListStatuses(pbc.ListStatusesRequest(), metadata=md).statuses
                assert held not in [st.ref for st in statuses]
                assert api.code(lambda: c.Delete(pbc.DeleteContentRequest(digest=digest), metadata=md)) == "NOT_FOUND"
                assert api.code(lambda: c.Read(pbc.ReadContentRequest(digest=digest), metadata=md)) == "NOT_FOUND"
                assert api.code(lambda: c.Update(pbc.UpdateRequest(info=pbc.Info(digest=digest, labels={"x": "1"})),
                                                 metadata=md)) == "NOT_FOUND"
                assert digest not in [i.digest for r in c.List(pbc.ListContentRequest(), metadata=md) for i in r.info]
                for k in (key, f"../{key}"):
                    assert api.code(lambda: s.Stat(pbs.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=k),
                                                   metadata=md)) == "NOT_FOUND"
                    assert api.code(lambda: s.Remove(pbs.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=k),
                                                     metadata=md)) == "NOT_FOUND"
        finally:
            spoof.close()
        # x's own ingest and snapshot of the same names are its own; its Cleanup is harmless
        x.write(held, b"x's bytes, not y's", commit=False)
        x.content.Abort(pbc.AbortRequest(ref=held))
        x.snapshots.Prepare(pbs.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=key))
        x.snapshots.Remove(pbs.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=key))
        x.snapshots.Cleanup(pbs.CleanupRequest(snapshotter=SNAPSHOTTER))
        assert y.status(held).offset == 10
        assert y.snapshots.Stat(pbs.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=key)).info.kind == pbs.ACTIVE
        mounts = y.snapshots.Mounts(pbs.MountsRequest(snapshotter=SNAPSHOTTER, key=key)).mounts
        assert all(os.path.isdir(m.source) for m in mounts)

        # knowing the digest, x becomes a holder of its own (containerd's shared policy):
        # its labels, its delete are its own
        assert x.info(digest).size == len(data)
        assert dict(x.info(digest).labels) == {}
        x.content.Update(pbc.UpdateRequest(info=pbc.Info(digest=digest, labels={"containerd.io/gc.ref.x": "1"})))
        x.content.Delete(pbc.DeleteContentRequest(digest=digest))
        assert dict(flotilla.info(digest).labels) == {"containerd.io/gc.root": "y"}
        assert y.read(digest) == data and blob_file(proxy_suite, digest).is_file()
    finally:
        for call in (lambda: y.content.Abort(pbc.AbortRequest(ref=held)),
                     lambda: y.content.Delete(pbc.DeleteContentRequest(digest=digest)),
                     lambda: y.snapshots.Remove(pbs.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=key))):
            y.code(call)
        flotilla.close()
    assert not blob_file(proxy_suite, digest).exists()
