"""Issue 2: ctr against the whole suite behaves as against containerd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid

import grpc
import pytest

from flotilla._api.containerd.api.events import namespace_pb2 as ev_namespace
from flotilla._api.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2 as ns_pb2
from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2_grpc as ns_grpc
from flotilla.testing import CTR, ContainerdPeer, PrivateSuite, ctr
from flotilla.testing.peers import terminate
from google.protobuf import any_pb2


def _normalise(text: str, address: str) -> str:
    return text.replace(address, "ADDRESS")


def _same_steps(suite: PrivateSuite, peer: ContainerdPeer, steps: list[list[str]]) -> None:
    for step in steps:
        ours = suite.ctr(*step)
        theirs = ctr(peer.address, *step)
        assert (ours.returncode, _normalise(ours.stdout, suite.address), _normalise(ours.stderr, suite.address)) == \
               (theirs.returncode, _normalise(theirs.stdout, peer.address), _normalise(theirs.stderr, peer.address)), step


def test_version_shows_server_with_stable_uuid(suite: PrivateSuite) -> None:
    first = suite.ctr("version", check=True).stdout
    assert re.search(r"Server:\n  Version:  \S+\n  Revision: .*\n  UUID: [0-9a-f-]{36}\n", first), first
    assert suite.ctr("version", check=True).stdout == first


def test_plugins_ls_has_containerd_columns_and_real_status(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    ours = suite.ctr("plugins", "ls", check=True).stdout.splitlines()
    theirs = ctr(containerd.address, "plugins", "ls", check=True).stdout.splitlines()
    assert ours[0].split() == theirs[0].split() == ["TYPE", "ID", "PLATFORMS", "STATUS"]
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in ours[1:]}
    for plugin in ("namespaces", "version", "introspection", "events"):
        assert rows[("io.containerd.grpc.v1", plugin)] == "ok"
    assert rows[("io.containerd.metadata.v1", "sql")] == "ok"
    # filters select as containerd's do
    only = suite.ctr("plugins", "ls", "type==io.containerd.grpc.v1,id==version", check=True).stdout.splitlines()
    assert len(only) == 2 and "version" in only[1]


def test_namespace_commands_match_containerd(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    name = "it-" + uuid.uuid4().hex[:8]
    steps = [
        ["namespaces", "create", name, "a=b"],
        ["namespaces", "create", name],                      # AlreadyExists
        ["namespaces", "label", name, "c=d"],
        ["namespaces", "label", name, "a="],                 # removes a
        ["namespaces", "create", "bad name"],                # InvalidArgument
        ["namespaces", "create", "x" * 80],                  # too long
        ["--namespace", "bad!", "content", "ls"],
        ["namespaces", "rm", name],
        ["namespaces", "rm", name],                          # NotFound, which ctr ignores
    ]
    _same_steps(suite, containerd, steps)


def test_oversized_label_update_is_invalid_argument(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    """containerd 1.6 answers this one with Unknown (its Update skips the error mapping);
    Flotilla gives the code containerd itself gives for the same label on Create."""
    name = "big-" + uuid.uuid4().hex[:8]
    suite.ctr("namespaces", "create", name, "keep=1", check=True)
    res = suite.ctr("namespaces", "label", name, "big=" + "v" * 4100)
    assert res.returncode == 1
    assert res.stderr == ("ctr: namespace.Labels: label key and value greater than maximum size (4096 bytes), "
                          "key: big: invalid argument\n")
    listed = suite.ctr("namespaces", "ls", check=True).stdout.splitlines()
    assert [name, "keep=1"] in [line.split() for line in listed]
    suite.ctr("namespaces", "rm", name, check=True)


def test_namespace_ls_shows_same_columns(suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    name = "ls-" + uuid.uuid4().hex[:8]
    for address in (suite.address, containerd.address):
        ctr(address, "namespaces", "create", name, "k=v", "x=y", check=True)
    ours = suite.ctr("namespaces", "ls", check=True).stdout.splitlines()
    theirs = ctr(containerd.address, "namespaces", "ls", check=True).stdout.splitlines()
    assert ours[0] == theirs[0]
    assert [l for l in ours if l.startswith(name)] == [l for l in theirs if l.startswith(name)]
    assert name in suite.ctr("namespaces", "ls", "-q", check=True).stdout.split()


def _codes(address: str, name: str) -> list[str]:
    """Status codes of malformed requests, sent as any gRPC client would."""
    out = []
    with grpc.insecure_channel(f"unix://{address}") as channel:
        ns = ns_grpc.NamespacesStub(channel)
        ev = events_pb2_grpc.EventsStub(channel)
        calls = [
            lambda: ns.Create(ns_pb2.CreateNamespaceRequest(namespace=ns_pb2.Namespace(name="bad name"))),
            lambda: ns.Create(ns_pb2.CreateNamespaceRequest(namespace=ns_pb2.Namespace(name=name, labels={"k": "v" * 5000}))),
            lambda: ns.Delete(ns_pb2.DeleteNamespaceRequest(name="never-" + name)),
            lambda: ns.Update(ns_pb2.UpdateNamespaceRequest(namespace=ns_pb2.Namespace(name=name), update_mask={"paths": ["name"]})),
            lambda: ev.Publish(events_pb2.PublishRequest(topic="/x"), metadata=[("containerd-namespace", "bad name")]),
            lambda: ev.Publish(events_pb2.PublishRequest(topic="/x")),
            lambda: ev.Publish(events_pb2.PublishRequest(topic="no-slash"), metadata=[("containerd-namespace", "ok")]),
            lambda: ev.Publish(events_pb2.PublishRequest(topic="/"), metadata=[("containerd-namespace", "ok")]),
        ]
        for call in calls:
            try:
                call()
                out.append("OK")
            except grpc.RpcError as exc:
                out.append(exc.code().name)
    return out


def test_malformed_requests_get_containerd_codes_and_services_keep_serving(
        suite: PrivateSuite, containerd: ContainerdPeer) -> None:
    name = "mal-" + uuid.uuid4().hex[:8]
    ours, theirs = _codes(suite.address, name), _codes(containerd.address, name)
    assert ours == theirs
    assert "INVALID_ARGUMENT" in ours and "NOT_FOUND" in ours and "FAILED_PRECONDITION" in ours
    suite.ctr("namespaces", "ls", check=True)
    assert name not in suite.ctr("namespaces", "ls", "-q", check=True).stdout


def test_unimplemented_methods_say_so(suite: PrivateSuite) -> None:
    method = "/containerd.services.sandbox.v1.Store/List"  # a later containerd API
    with grpc.insecure_channel(f"unix://{suite.address}") as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details() == "containerd.services.sandbox.v1.Store/List: not implemented by flotilla yet"


def _read_events(address: str, lines: list[str], ready: threading.Event) -> subprocess.Popen[str]:
    proc = subprocess.Popen([CTR, "--address", address, "events"], stdout=subprocess.PIPE, text=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            ready.set()
    threading.Thread(target=pump, daemon=True).start()
    return proc


def _wait_for(lines: list[str], needle: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in lines:
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not seen in {lines!r}")


def test_ctr_events_sees_namespace_events_and_published_ones(suite: PrivateSuite) -> None:
    lines: list[str] = []
    ready = threading.Event()
    proc = _read_events(suite.address, lines, ready)
    try:
        # the subscription is live once one of our probes shows up
        probe = "probe-" + uuid.uuid4().hex[:8]
        deadline = time.monotonic() + 20
        while not ready.wait(0.2) and time.monotonic() < deadline:
            suite.ctr("namespaces", "label", probe, "t=" + str(time.monotonic_ns()))
        name = "ev-" + uuid.uuid4().hex[:8]
        suite.ctr("namespaces", "create", name, "a=b", check=True)
        line = _wait_for(lines, f'/namespaces/create {{"name":"{name}","labels":{{"a":"b"}}}}')
        assert " default /namespaces/create " in line
        suite.ctr("namespaces", "rm", name, check=True)
        assert f" {name} /namespaces/delete " in _wait_for(lines, f'/namespaces/delete {{"name":"{name}"}}')

        # an event published by a client reaches ctr events, payload intact
        payload = ev_namespace.NamespaceCreate(name="published", labels={"by": "client"})
        with grpc.insecure_channel(f"unix://{suite.address}") as channel:
            events_pb2_grpc.EventsStub(channel).Publish(
                events_pb2.PublishRequest(topic="/flotilla/test", event=any_pb2.Any(
                    type_url="containerd.events.NamespaceCreate", value=payload.SerializeToString())),
                metadata=[("containerd-namespace", "pubns")])
        line = _wait_for(lines, "/flotilla/test")
        assert " pubns /flotilla/test " in line and '"by":"client"' in line
        suite.ctr("namespaces", "rm", probe)
    finally:
        terminate(proc, 10)  # SIGTERM: a test started as a background job has SIGINT ignored


def test_subscribe_filters_select_events(suite: PrivateSuite) -> None:
    with grpc.insecure_channel(f"unix://{suite.address}") as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        stream = stub.Subscribe(events_pb2.SubscribeRequest(filters=['topic=="/wanted/one"']), timeout=20)
        got: list[events_pb2.Envelope] = []
        reader = threading.Thread(target=lambda: got.extend([next(stream)]), daemon=True)
        reader.start()
        deadline = time.monotonic() + 15
        while reader.is_alive() and time.monotonic() < deadline:
            for topic in ("/unwanted/one", "/wanted/one"):
                stub.Publish(events_pb2.PublishRequest(topic=topic, event=any_pb2.Any(type_url="x")),
                             metadata=[("containerd-namespace", "f")])
            reader.join(0.2)
        stream.cancel()
        assert got and got[0].topic == "/wanted/one" and got[0].namespace == "f"


def test_metadata_sigkill_loses_no_call_and_no_namespace(suite: PrivateSuite, stress: int) -> None:
    names = [f"keep-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    for n in names:
        suite.ctr("namespaces", "create", n, check=True)
    failures: list[str] = []
    calls = 0
    stop = threading.Event()

    def loop() -> None:
        nonlocal calls
        with grpc.insecure_channel(f"unix://{suite.address}") as channel:
            stub = ns_grpc.NamespacesStub(channel)
            while not stop.is_set():
                try:
                    listed = {n.name for n in stub.List(ns_pb2.ListNamespacesRequest(), timeout=15).namespaces}
                    if not set(names) <= listed:
                        failures.append(f"missing {set(names) - listed}")
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                calls += 1

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3 * stress):
            time.sleep(0.5)
            pid = suite.suite.program_pid("metadata")
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # supervisord restarts it with a new pid
                try:
                    if suite.suite.program_pid("metadata") not in (0, pid):
                        break
                except ValueError:
                    pass
                time.sleep(0.1)
            else:
                pytest.fail("metadata was not restarted")
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert calls > 20
    assert failures == []
    listed = suite.ctr("namespaces", "ls", "-q", check=True).stdout.split()
    assert set(names) <= set(listed)
