"""Issue 22: any one component dies (or is restarted) under load, and no client call fails.

Debian's ctr runs five loops (cold pulls, ``run --rm`` with exit codes, detached runs killed
and waited, lists, 64 MiB ingests) against a suite of its own while one component at a time
is SIGKILLed (supervisord starts it again) or restarted with ``flotilla restart``. A killed
gateway may cost the calls it had in flight, nothing else may fail. Bounded: every component
once (FLOTILLA_STRESS=N: N rounds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from flotilla.testing import PrivateSuite, Registry
from flotilla.testing.chaos import Chaos, Killer
from flotilla.testing.images import busybox_image, push
from flotilla.testing.peers import CTR, terminate

COMPONENTS = ["nats", "metadata", "content", "snapshots", "runtime", "transfer", "gateway"]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as r:
        push(r.host, "busybox", "latest", busybox_image())
        yield r


def _image(suite: PrivateSuite, registry: Registry, namespace: str) -> str:
    ref = f"{registry.host}/busybox:latest"
    suite.ctr("image", "pull", "--plain-http", ref, namespace=namespace, check=True, timeout=120)
    return ref


def _sigkill(suite: PrivateSuite, process: str) -> None:
    """SIGKILL one process (``gateway`` or ``gateway:gateway-1``) and wait until supervisord
    has another in its place."""
    pids = {proc: pid for proc, pid in suite.suite.status().items()
            if pid and (proc == process or proc.startswith(process + ":"))}
    proc, pid = sorted(pids.items())[0]
    os.kill(pid, signal.SIGKILL)


def _unexpected(chaos: Chaos) -> list[str]:
    """Failed calls other than those in flight on a gateway process when it was killed."""
    record = chaos.record
    return [f"{c.loop} {' '.join(c.args[:4])}: {c.stderr[-300:]}" for c in record.failed()
            if not record.in_flight_at_kill(c, "gateway")]


def _left_over(suite: PrivateSuite, chaos: Chaos) -> list[str]:
    """What a client did not leave: containers, tasks, snapshots of the run loops (but those
    of calls that failed: their client left them); pulled images not complete; blobs the
    content store finds wrong."""
    problems = []
    ns = chaos.namespace
    record = chaos.record
    # a gateway killed under a `ctr run --rm` can take the container's delete with it, which
    # ctr never reports (it defers the delete and ignores its error): the client could not
    # know, as with a containerd killed then; its container is excused like a failed call's
    gateways = {k.component for k in record.kills if k.component.startswith("gateway")}
    cut = [c for c in record.calls if c.loop == "run" and any(record.in_flight_at_kill(c, g) for g in gateways)]
    failed = {arg for c in [*record.failed(), *cut] for arg in c.args}
    for what in (("containers", "ls", "-q"), ("tasks", "ls")):
        rows = suite.ctr(*what, namespace=ns).stdout.splitlines()[(what[0] == "tasks"):]
        ids = [row.split()[0] for row in rows if row.strip()]
        if [i for i in ids if i not in failed]:
            problems.append(f"{' '.join(what)}: {ids}")
    # the one snapshot left is the pulled image's own (a committed chain); no active one
    active = [line for line in suite.ctr("snapshots", "ls", namespace=ns).stdout.splitlines()[1:]
              if "Active" in line and line.split()[0] not in failed]
    if active:
        problems.append(f"active snapshots: {active}")
    pulled_ok = {c.args for c in chaos.record.calls if c.loop == "pull" and c.ok}
    if pulled_ok:  # each successful cold pull must be complete
        for pull_ns in chaos.pull_namespaces:
            out = suite.ctr("images", "check", namespace=pull_ns).stdout
            if out.strip() and "complete" not in out:
                problems.append(f"images check in {pull_ns}: {out}")
    verify = subprocess.run([sys.executable, "-m", "flotilla.cli", "content", "verify", "--json",
                             "--root", str(suite.suite.root)], capture_output=True, text=True, timeout=300)
    if verify.returncode != 0:
        problems.append(f"content verify: {verify.stdout[-500:]} {verify.stderr[-500:]}")
    return problems


def _run(suite: PrivateSuite, registry: Registry, stress: int, act: "Killer.kill", kills: list[str],
         every: float) -> tuple[Chaos, Killer]:
    namespace = "chaos-" + os.urandom(3).hex()
    chaos = Chaos(suite.address, _image(suite, registry, namespace), namespace=namespace)
    killer = Killer(chaos, {name: (lambda name=name: act(name)) for name in kills},
                    lambda _name: suite.suite.answers(), every=every, seed=int.from_bytes(os.urandom(2), "big"))
    chaos.start()
    try:
        killer.run(len(kills) * stress)
        chaos.stop.wait(every)  # the loops go on a while after the last one
    finally:
        chaos.finish()
    return chaos, killer


@pytest.mark.slow
def test_sigkill_of_any_component_fails_no_call_but_a_killed_gateways(registry: Registry, stress: int) -> None:
    with PrivateSuite() as suite:
        chaos, killer = _run(suite, registry, stress, lambda name: _sigkill(suite, name), COMPONENTS, every=3.0)
        try:
            summary = {"calls": len(chaos.record.calls), "recovery_s": killer.recovery,
                       "kills": [(k.component, round(k.at, 2)) for k in chaos.record.kills],
                       "failures": [(c.loop, round(c.started, 2), round(c.ended, 2)) for c in chaos.record.failed()]}
            assert len(chaos.record.kills) == len(COMPONENTS) * stress
            assert chaos.record.wrong_exit_codes == []
            assert _unexpected(chaos) == [], json.dumps(summary)
            assert _left_over(suite, chaos) == []
            assert len(chaos.record.calls) > 100  # the loops did run
        finally:
            chaos.clean()


@pytest.mark.slow
def test_graceful_restart_of_every_component_fails_no_call(registry: Registry, stress: int) -> None:
    with PrivateSuite() as suite:
        chaos, _ = _run(suite, registry, stress, lambda name: suite.suite.restart(name), COMPONENTS, every=2.0)
        try:
            assert chaos.record.wrong_exit_codes == []
            assert [f"{c.loop} {' '.join(c.args[:4])}: {c.stderr[-300:]}" for c in chaos.record.failed()] == []
            assert _left_over(suite, chaos) == []
        finally:
            chaos.clean()


@pytest.mark.slow
def test_two_instances_cover_each_others_death(registry: Registry, stress: int) -> None:
    """With two gateways, two metadata and two content instances, killing one of a pair is
    covered by the other one, not only by a restart."""
    with PrivateSuite(instances={"gateway": 2, "metadata": 2, "content": 2}) as suite:
        status = suite.suite.status()
        for name in ("gateway", "metadata", "content"):
            assert sorted(p for p in status if p.startswith(name + ":")) == [f"{name}:{name}-0", f"{name}:{name}-1"]
        kills = ["gateway:gateway-0", "metadata:metadata-1", "content:content-0", "gateway:gateway-1"]
        chaos, _ = _run(suite, registry, stress, lambda name: _sigkill(suite, name), kills, every=3.0)
        try:
            record = chaos.record
            unexpected = [f"{c.loop} {' '.join(c.args[:4])}: {c.stderr[-300:]}" for c in record.failed()
                          if not any(record.in_flight_at_kill(c, g) for g in kills[::3])]
            assert unexpected == []
            assert _left_over(suite, chaos) == []
        finally:
            chaos.clean()


@pytest.mark.slow
def test_attach_wait_and_events_go_on_through_backend_restarts(registry: Registry) -> None:
    """``ctr task attach`` (its output and Tasks.Wait) and ``ctr events`` keep going while the
    runtime, snapshots, metadata and content services are each SIGKILLed in turn; the exit
    status is not lost."""
    with PrivateSuite() as suite:
        ns = "long-" + os.urandom(3).hex()
        ref = _image(suite, registry, ns)
        script = "i=0; while [ $i -lt 80 ]; do echo tick$i; i=$((i+1)); sleep 0.1; done; exit 3"
        events = subprocess.Popen([CTR, "--address", suite.address, "events"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        attach = None
        try:
            time.sleep(0.5)  # subscribed
            suite.ctr("run", "-d", ref, "ticker", "sh", "-c", f"sleep 1; {script}", namespace=ns, check=True)
            attach = subprocess.Popen([CTR, "--address", suite.address, "--namespace", ns, "task", "attach",
                                       "ticker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for component in ("runtime", "snapshots", "metadata", "content"):
                time.sleep(1.0)
                _sigkill(suite, component)
            out, err = attach.communicate(timeout=60)
            assert attach.returncode == 3, (attach.returncode, err)
            ticks = [line for line in out.split() if line.startswith("tick")]
            assert ticks == [f"tick{i}" for i in range(80)], out[-500:]
            suite.ctr("run", "--rm", ref, "after", "true", namespace=ns, check=True)  # after every restart
            time.sleep(0.5)
        finally:
            if attach is not None and attach.poll() is None:
                terminate(attach, 5)  # type: ignore[arg-type]
            terminate(events, 5)  # type: ignore[arg-type]
            suite.ctr("task", "rm", "-f", "ticker", namespace=ns)
            suite.ctr("containers", "rm", "ticker", namespace=ns)
        seen = events.communicate()[0]
        exits = [line for line in seen.splitlines() if "/tasks/exit" in line and ns in line]
        assert any('"exit_status":3' in line.replace(" ", "") for line in exits), exits
        assert any("/tasks/start" in line and ns in line for line in seen.splitlines()[-20:]), seen[-2000:]
