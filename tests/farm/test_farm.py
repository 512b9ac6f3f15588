"""A farm of three hosts (docs/farm.md): network namespaces on a bridge of their own, one
nats-server per host clustered with TLS, metadata on one PostgreSQL, a suite per host, ctr
run inside each host's namespace. What is farm-wide is seen from every host; what is
host-local is seen only where it was made; a host lost and back, or a nats-server killed,
costs the other hosts no call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from flotilla.testing.chaos import Chaos
from flotilla.testing.farm import Farm, FarmHost
from flotilla.testing.images import random_layers_image
from flotilla.testing.peers import CTR, terminate
from flotilla.testing.postgres import available

pytestmark = pytest.mark.skipif(not available(), reason="PostgreSQL is installed by make test")


def ok(host: FarmHost, *args: str, namespace: str = "default", timeout: float = 120, input: str | None = None) -> str:
    out = host.ctr(*args, namespace=namespace, timeout=timeout, input=input)
    assert out.returncode == 0, f"{host.id}: ctr {' '.join(args)}: {out.stderr}"
    return out.stdout


def column(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()[1:] if line.split()]


def test_farm_wide_records_are_seen_everywhere_host_records_only_at_home(farm: Farm, busybox: str) -> None:
    h1, h2, h3 = farm.hosts
    ns = "farm-" + uuid.uuid4().hex[:6]
    ok(h1, "namespaces", "create", ns)
    assert ns in column(ok(h3, "namespaces", "ls"))

    ok(h1, "images", "pull", "--plain-http", busybox, namespace=ns)
    assert busybox in ok(h2, "images", "ls", "-q", namespace=ns).split()
    check = ok(h2, "images", "check", namespace=ns)
    assert "complete" in check and "incomplete" not in check, check

    # host 2 runs it: the layers come from the content on host 1, the snapshot is made here
    ok(h2, "run", "-d", busybox, "on-h2", "sleep", "300", namespace=ns)
    try:
        assert "on-h2" in column(ok(h2, "tasks", "ls", namespace=ns))
        assert "on-h2" not in column(ok(h3, "tasks", "ls", namespace=ns))
        assert "on-h2" not in column(ok(h3, "containers", "ls", namespace=ns))
        assert "on-h2" not in column(ok(h3, "snapshots", "ls", namespace=ns))
        assert "on-h2" in column(ok(h2, "snapshots", "ls", namespace=ns))
        # the same name on another host is another container
        assert ok(h3, "run", "--rm", busybox, "on-h2", "echo", "hi from h3", namespace=ns).strip() == "hi from h3"
        # the namespace is in use on host 2: no host may remove it
        refused = h3.ctr("namespaces", "rm", ns)
        assert refused.returncode != 0 and "failed precondition" in refused.stderr, refused.stderr
    finally:
        h2.ctr("tasks", "kill", "-s", "KILL", "on-h2", namespace=ns)
        h2.ctr("tasks", "rm", "-f", "on-h2", namespace=ns)
        h2.ctr("containers", "rm", "on-h2", namespace=ns)


def test_events_of_a_host_local_record_stay_on_its_host(farm: Farm, busybox: str) -> None:
    h1, h2, h3 = farm.hosts
    ns = "ev-" + uuid.uuid4().hex[:6]
    ok(h1, "namespaces", "create", ns)
    ok(h1, "images", "pull", "--plain-http", busybox, namespace=ns)
    watchers = {h.id: subprocess.Popen(h.command(CTR, "--address", h.socket, "events"), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True) for h in (h2, h3)}
    try:
        time.sleep(1)  # subscribed
        ok(h2, "run", "--rm", busybox, "ev-task", "true", namespace=ns)
        ok(h1, "images", "tag", busybox, busybox + "-tagged", namespace=ns)
        time.sleep(1)
    finally:
        for proc in watchers.values():
            terminate(proc, 5)  # type: ignore[arg-type]
    seen = {h: proc.communicate()[0] for h, proc in watchers.items()}
    assert "/tasks/start" in seen[h2.id] and "/snapshot/prepare" in seen[h2.id], seen[h2.id]
    there = seen[h3.id]
    assert "/images/create" in there, there  # the farm's images are every host's
    assert "/tasks/" not in there and "/snapshot/" not in there and "/containers/" not in there, there


def _loops(farm: Farm, hosts: list[FarmHost], image: str) -> list[Chaos]:
    loops = [Chaos(h.socket, image, enter=h.suite.enter()) for h in hosts]
    for host, loop in zip(hosts, loops):
        ok(host, "images", "pull", "--plain-http", image, namespace=loop.namespace)
        loop.start(("runs", "lists"))
    return loops


def _finish(loops: list[Chaos]) -> list[str]:
    failed = []
    for loop in loops:
        loop.finish()
        failed += [f"{c.loop} {' '.join(c.args)}: {c.stderr}" for c in loop.record.failed()]
        assert not loop.record.wrong_exit_codes, loop.record.wrong_exit_codes
        assert sum(c.loop == "run" for c in loop.record.calls) >= 3, "the loop hardly ran"
    return failed


def test_a_host_lost_costs_the_others_nothing_and_finds_its_containers_again(farm: Farm, busybox: str) -> None:
    h1, h2, h3 = farm.hosts
    ok(h2, "images", "pull", "--plain-http", busybox)
    ok(h2, "run", "-d", busybox, "survivor", "sleep", "600")
    try:
        loops = _loops(farm, [h1, h3], busybox)
        try:
            time.sleep(3)
            h2.lose()
            time.sleep(8)   # the others keep serving while host 2 is away
            h2.up()
            time.sleep(2)
        finally:
            failed = _finish(loops)
        assert failed == [], failed
        tasks = ok(h2, "tasks", "ls")
        assert any(line.split()[0] == "survivor" and "RUNNING" in line for line in tasks.splitlines()), tasks
        assert ok(h2, "tasks", "exec", "--exec-id", "probe", "survivor", "echo", "back").strip() == "back"
    finally:
        h2.ctr("tasks", "kill", "-s", "KILL", "survivor")
        h2.ctr("tasks", "rm", "-f", "survivor")
        h2.ctr("containers", "rm", "survivor")


def test_a_nats_server_killed_costs_no_call(farm: Farm, busybox: str) -> None:
    h1, h2, h3 = farm.hosts
    loops = _loops(farm, [h1, h3], busybox)
    try:
        for victim in (h1, h3, h1):
            time.sleep(3)
            pid = victim.suite.program_pid("nats")
            assert pid
            os.kill(pid, signal.SIGKILL)
        time.sleep(4)
    finally:
        failed = _finish(loops)
    assert failed == [], failed


def test_images_rm_sync_on_one_host_never_collects_what_another_host_pulls(farm: Farm) -> None:
    h1, h2, _ = farm.hosts
    image = random_layers_image(24, layers=6)
    one, two = farm.push("layers", "one", image), farm.push("layers", "two", image)  # the same blobs
    ns = "gc-" + uuid.uuid4().hex[:6]
    for _ in range(3):
        ok(h1, "images", "pull", "--plain-http", one, namespace=ns)
        results: dict[str, object] = {}

        def pull() -> None:
            results["pull"] = h2.ctr("images", "pull", "--plain-http", two, namespace=ns, timeout=180)
        puller = threading.Thread(target=pull)
        puller.start()
        time.sleep(0.3)
        ok(h1, "images", "rm", "--sync", one, namespace=ns)
        puller.join(200)
        pulled = results["pull"]
        assert getattr(pulled, "returncode", 1) == 0, getattr(pulled, "stderr", "no answer")
        check = ok(h2, "images", "check", namespace=ns)
        assert "complete" in check and "incomplete" not in check, check
        assert ok(h2, "run", "--rm", two, "gc-run", "sh", "-c", "cat /blob* | wc -c", namespace=ns).strip()
        ok(h2, "images", "rm", "--sync", two, namespace=ns)
    # nothing is left: every blob went with the last image
    assert ok(h1, "content", "ls", "-q", namespace=ns).split() == []


def test_the_farm_fetches_each_blob_from_the_registry_once(farm: Farm) -> None:
    """Three hosts pull one image at the same moment, two with ctr and one with `flotilla
    pull` (the transfer service): the content store is the farm's, so a blob one host is
    fetching is locked to the others (its ingest ref, on one host for the farm), which find
    it committed when the lock goes; a host that then runs the image fetches nothing."""
    image = random_layers_image(12, layers=3)
    ref = farm.push("together", "v1", image)
    ns = "once-" + uuid.uuid4().hex[:6]
    assert farm.registry is not None
    before = len(farm.registry.blob_gets())
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def pull(host: FarmHost) -> None:
        if host is farm.hosts[2]:
            results[host.id] = subprocess.run(host.command(
                sys.executable, "-m", "flotilla.cli", "--address", host.socket, "--namespace", ns, "pull",
                "--plain-http", ref), capture_output=True, text=True, timeout=180)
            return
        results[host.id] = host.ctr("images", "pull", "--plain-http", ref, namespace=ns, timeout=180)
    pullers = [threading.Thread(target=pull, args=(h,)) for h in farm.hosts]
    for t in pullers:
        t.start()
    for t in pullers:
        t.join(200)
    for host_id, result in results.items():
        assert result.returncode == 0, f"{host_id}: {result.stderr}"
    layers = {blob.digest for blob in image.layers[1:]}  # the random ones; busybox's the farm has
    served = farm.registry.blob_gets()[before:]
    assert sorted(d for d in served if d in layers) == sorted(layers), served  # each crossed once
    assert len(served) == len(set(served)), served  # and no blob twice (the config, the base layer)
    for host in farm.hosts:
        check = ok(host, "images", "check", namespace=ns)
        assert "complete" in check and "incomplete" not in check, check
        assert ok(host, "run", "--rm", ref, f"once-{host.id}", "sh", "-c", "cat /blob* | wc -c",
                  namespace=ns).strip() == str(3 * (4 << 20))
    assert farm.registry.blob_gets()[before:] == served  # running it fetched nothing
    ok(farm.hosts[0], "images", "rm", "--sync", ref, namespace=ns)


def _human(size: str) -> float:
    """ctr's sizes (go-units' HumanSize: 12.5MB, decimal) in bytes."""
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    number = size.rstrip("kMGB")
    return float(number) * units[size[len(number):] or "B"]


def test_a_host_lost_mid_fetch_leaves_the_rest_to_another(farm: Farm) -> None:
    """Host 2 fetches a big layer over a slow registry link and is lost half-way; host 3,
    pulling the same image, takes the fetch over where the farm's store had got to: the
    registry sends the layer's bytes about once in all, and host 3's image is right."""
    _, h2, h3 = farm.hosts
    assert farm.registry is not None and farm.network is not None
    image = random_layers_image(48, layers=1)
    big = image.layers[1]
    ref = farm.push("slow", "v1", image)
    ns = "midway-" + uuid.uuid4().hex[:6]
    link = farm.network.others["registry"].name
    shape = ["ip", "netns", "exec", link, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "64mbit",
             "burst", "64kb", "latency", "500ms"]
    subprocess.run(shape, check=True, capture_output=True)
    first = subprocess.Popen(h2.command(CTR, "--address", h2.socket, "--namespace", ns, "images", "pull",
                                        "--plain-http", ref), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until host 2 has stored a quarter of it
            active = h3.ctr("content", "active", namespace=ns).stdout
            sizes = [_human(line.split()[1]) for line in active.splitlines()[1:] if big.digest[7:19] in line]
            if sizes and sizes[0] > len(big.data) // 4:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("host 2 never got a quarter of the layer")
        second = subprocess.Popen(h3.command(CTR, "--address", h3.socket, "--namespace", ns, "images", "pull",
                                             "--plain-http", ref), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        time.sleep(1)
        h2.lose()
        out, err = second.communicate(timeout=240)
        assert second.returncode == 0, err
    finally:
        subprocess.run(["ip", "netns", "exec", link, "tc", "qdisc", "del", "dev", "eth0", "root"], capture_output=True)
        if first.poll() is None:
            terminate(first, 5)  # type: ignore[arg-type]
        h2.up()
    check = ok(h3, "images", "check", namespace=ns)
    assert "complete" in check and "incomplete" not in check, check
    assert ok(h3, "run", "--rm", ref, "midway", "sh", "-c", "cat /blob0 | wc -c", namespace=ns).strip() == str(48 << 20)
    sent = farm.registry.blob_bytes(big.digest)
    assert len(big.data) <= sent < len(big.data) * 1.25, (sent, len(big.data))  # about once, not twice
    ok(h3, "images", "rm", "--sync", ref, namespace=ns)
