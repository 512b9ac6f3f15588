"""Writers as containerd's own content test suite drives them: a writer closed and at once
reopened (or aborted) on the same ref, and the times a writer's status reports."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc

from flotilla._api.containerd.api.services.content.v1 import content_pb2 as pbc
from flotilla._api.containerd.api.services.content.v1 import content_pb2_grpc as pbc_grpc
from flotilla.testing import PrivateSuite

NS = "writers"


def _stub(suite: PrivateSuite) -> tuple[grpc.Channel, pbc_grpc.ContentStub]:
    channel = grpc.insecure_channel(f"unix://{suite.address}")
    return channel, pbc_grpc.ContentStub(channel)


def _md() -> list[tuple[str, str]]:
    return [("containerd-namespace", NS)]


def test_a_writer_closed_is_free_for_the_next_open_and_abort_at_once(suite: PrivateSuite) -> None:
    """Go's client closes a writer with CloseSend and does not wait for the stream's end: the
    next Writer on the ref (or an Abort) comes right behind it and must not find it locked."""
    channel, stub = _stub(suite)
    ref = "reopen-" + uuid.uuid4().hex[:8]
    try:
        for i in range(30):
            call = stub.Write(iter([pbc.WriteContentRequest(action=pbc.STAT, ref=ref)]), metadata=_md(), timeout=10)
            next(call)  # the answer, not the stream's end: the next open races the release
            if i % 3 == 2:
                stub.Abort(pbc.AbortRequest(ref=ref), metadata=_md(), timeout=10)
            for _ in call:
                pass
    finally:
        channel.close()


def test_a_writers_status_says_the_last_write_came_when_it_came(suite: PrivateSuite) -> None:
    """As the suite's checkUpdateStatus: a writer's stat after a write reports an updated_at
    between the moments before and after that write (a data file's mtime, from the kernel's
    coarse clock, may be a tick earlier)."""
    channel, stub = _stub(suite)
    ref = "times-" + uuid.uuid4().hex[:8]
    outside = []
    answers: list[pbc.WriteContentResponse] = []
    moments: list[int] = []

    def feed() -> Iterator[pbc.WriteContentRequest]:
        yield pbc.WriteContentRequest(action=pbc.STAT, ref=ref)
        for i in range(20):
            while len(answers) < 1 + 2 * i:  # each message once the one before is answered
                time.sleep(0.0005)
            moments.append(time.time_ns())
            yield pbc.WriteContentRequest(action=pbc.WRITE, ref=ref, offset=i, data=b"x")
            while len(answers) < 2 + 2 * i:
                time.sleep(0.0005)
            moments.append(time.time_ns())
            yield pbc.WriteContentRequest(action=pbc.STAT, ref=ref)
    try:
        for answer in stub.Write(feed(), metadata=_md(), timeout=30):
            answers.append(answer)
        for i in range(20):
            stat = answers[2 + 2 * i]
            updated = stat.updated_at.seconds * 10**9 + stat.updated_at.nanos
            if not moments[2 * i] <= updated <= moments[2 * i + 1]:
                outside.append((moments[2 * i], updated, moments[2 * i + 1]))
        assert stat.offset == 20 and outside == []
    finally:
        stub.Abort(pbc.AbortRequest(ref=ref), metadata=_md(), timeout=10)
        channel.close()


def test_a_resumed_writer_reports_the_last_write_of_the_one_before(suite: PrivateSuite) -> None:
    """checkResumeWriter: the status of a writer reopened on a ref is the one before its close."""
    channel, stub = _stub(suite)
    ref = "resume-" + uuid.uuid4().hex[:8]
    outside = []
    try:
        for i in range(10):
            before = time.time_ns()
            list(stub.Write(iter([pbc.WriteContentRequest(action=pbc.WRITE, ref=ref, offset=i, data=b"y")]),
                            metadata=_md(), timeout=10))
            after = time.time_ns()
            time.sleep(0.005)  # more than a tick of the kernel's coarse clock
            stat = list(stub.Write(iter([pbc.WriteContentRequest(action=pbc.STAT, ref=ref)]),
                                   metadata=_md(), timeout=10))[0]
            updated = stat.updated_at.seconds * 10**9 + stat.updated_at.nanos
            if stat.offset != i + 1 or not before <= updated <= after:
                outside.append((before, updated, after, stat.offset))
        assert outside == []
    finally:
        stub.Abort(pbc.AbortRequest(ref=ref), metadata=_md(), timeout=10)
        channel.close()
