"""Issue 27: a consumer's pulls go on while Flotilla's content service is SIGKILLed under
them (supervisord starts it again; the gateway's calls are retried within their deadline, as
for Flotilla's own socket), and while the gateway's instances are killed or restarted (the
consumer's socket name always leads to a live instance)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from flotilla.services.gateway.proxy_sockets import handoffs
from flotilla.testing import PrivateSuite, Registry
from flotilla.testing.peers import ContainerdPeer

from .helpers import (
    SNAPSHOTTER, CountingProxy, consumer_socket, content_digest, digests, flotilla_content, image_of_its_own,
    pull, pushed, run, wait_for,
)

ROUNDS = 5
# round -> the blob GET of that round's pull at which content dies. The kill lands when the
# test's proxy has asked supervisord for content's pid: at once on a quiet machine (every
# other blob's write yet to begin), under load when the other layers are written and
# committing (a commit killed between its move and its record is finished by the next
# instance; a writer whose data file the next instance does not find copies its bytes over:
# libs/api/content.Writer._carry_over)
KILL_AT = {1: 1, 3: 1}


def test_pulls_go_on_while_the_content_service_is_killed(proxy_suite: PrivateSuite, proxy_registry: Registry) -> None:
    image = image_of_its_own(extra_mib=8, layers=4)
    ref = pushed(proxy_registry.host, image)
    killed: list[int] = []
    state = {"round": -1, "gets": 0}
    lock = threading.Lock()

    def kill_content(path: str) -> None:
        with lock:
            state["gets"] += 1
            if KILL_AT.get(state["round"]) != state["gets"]:
                return
        pid = proxy_suite.suite.program_pid("content")
        if pid:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with CountingProxy(proxy_registry.host, on_blob=kill_content) as registry, \
            ContainerdPeer(proxy=consumer_socket(proxy_suite, "chaos")) as peer:
        named = registry.host + ref[ref.index("/"):]
        for i in range(ROUNDS):
            with lock:
                state["round"], state["gets"] = i, 0
            try:
                pull(peer, ref, registry.host)  # fails the test if ctr fails
            except AssertionError as exc:  # with what Flotilla's content service said
                log = proxy_suite.suite.logs / "content.log"
                raise AssertionError(f"{exc}\ncontent's log:\n{log.read_text()[-4000:]}") from None
            if i in KILL_AT:
                assert len(killed) == len([r for r in KILL_AT if r <= i])  # it died under this pull
                wait_for("content restarted", lambda: proxy_suite.suite.program_pid("content") not in (0, *killed))
            for digest in digests(image):
                assert content_digest(peer, digest) == digest
            run(peer, "run", "--rm", "--snapshotter", SNAPSHOTTER, named, f"chaos-{i}", "cat", "/etc/test-id")
            run(peer, "image", "rm", "--sync", named)
            assert flotilla_content(proxy_suite, "chaos").isdisjoint(digests(image))
        assert registry.get("blobs") > 0
    assert len(killed) == len(KILL_AT)


def _serving(public: Path) -> list[int]:
    """The live gateway instances that accept on ``public`` (each offers it to the next)."""
    pids = [int(p.name.removesuffix(".handoff").rpartition(".")[2]) for p in handoffs(public)]
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_a_consumers_socket_outlives_gateway_kills_and_restarts(proxy_suite: PrivateSuite,
                                                                proxy_registry: Registry) -> None:
    image = image_of_its_own()
    ref = pushed(proxy_registry.host, image)
    public = consumer_socket(proxy_suite, "gw")
    with ContainerdPeer(proxy=public) as peer:
        pull(peer, ref)
        bound = os.stat(public).st_ino
        for pid in proxy_suite.suite.program_pids("gateway"):  # one, then the other
            os.kill(pid, signal.SIGKILL)
            # at once: the other instance accepts on the very same socket
            run(peer, "run", "--rm", "--snapshotter", SNAPSHOTTER, ref, f"gw-{pid}", "true")
            wait_for("the killed gateway back", lambda: len(proxy_suite.suite.program_pids("gateway")) == 2
                     and pid not in proxy_suite.suite.program_pids("gateway"))
            wait_for("it serves the socket too", lambda: len(_serving(public)) == 2)
        assert os.stat(public).st_ino == bound  # never bound again while an instance lived

        # a graceful restart of every instance, one after the other, under a pull loop
        failures: list[str] = []
        pulled: list[int] = []
        done = threading.Event()

        def loop() -> None:
            for i in range(40):
                if done.is_set():
                    return
                try:
                    run(peer, "image", "rm", "--sync", ref)
                    pull(peer, ref)
                    pulled.append(i)
                except AssertionError as exc:
                    failures.append(f"round {i}: {exc}")
                    return

        worker = threading.Thread(target=loop)
        worker.start()
        try:
            proxy_suite.suite.restart("gateway")
        finally:
            done.set()
            worker.join(300)
        assert not worker.is_alive()
        assert failures == [] and pulled
        assert os.stat(public).st_ino == bound
        run(peer, "run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "gw-2", "true")
        run(peer, "image", "rm", "--sync", ref)
        assert flotilla_content(proxy_suite, "gw").isdisjoint(digests(image))
