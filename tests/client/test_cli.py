"""The `flotilla` command for people, against containerd and against Flotilla."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from flotilla.testing import Registry
from flotilla.testing.images import busybox_image, push

from .conftest import Images


def flotilla(address: str, ns: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flotilla.cli", "--address", address, "--namespace", ns, *args],
                          capture_output=True, text=True, timeout=180, input=input)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_pull_images_run_and_rmi(address: str, ns: str, images: Images) -> None:
    ref = images.ref("busybox")
    res = flotilla(address, ns, "pull", ref)
    out = ok(res)
    assert out.strip().startswith(ref + " sha256:")
    # not a terminal: one plain line per finished blob, no escape sequences
    assert "layer-sha256:" in res.stderr and ": done" in res.stderr and "\x1b[" not in res.stderr
    table = ok(flotilla(address, ns, "images")).splitlines()
    assert table[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS"] and ref in table[1]
    listed = json.loads(ok(flotilla(address, ns, "images", "--json")))
    assert [i["name"] for i in listed] == [ref] and listed[0]["platforms"] == ["linux/amd64"]
    res = flotilla(address, ns, "run", "--rm", "--env", "A=b", ref, "r1", "sh", "-c", "echo $A; exit 4")
    assert (res.returncode, res.stdout) == (4, "b\n"), res.stderr
    assert json.loads(ok(flotilla(address, ns, "ps", "--json"))) == []
    ok(flotilla(address, ns, "rmi", "--sync", ref))
    res = flotilla(address, ns, "run", "--rm", ref, "r2", "true")
    assert res.returncode == 1 and "pull it first" in res.stderr


def test_detached_container_ps_exec_kill_rm(address: str, ns: str, images: Images, tmp_path: object) -> None:
    ref = images.ref("busybox")
    ok(flotilla(address, ns, "pull", ref))
    assert ok(flotilla(address, ns, "run", "-d", "--mount", "type=bind,src=/etc,dst=/host-etc,options=rbind:ro",
                       ref, "d1", "sleep", "600")).strip() == "d1"
    rows = json.loads(ok(flotilla(address, ns, "ps", "--json")))
    assert [(r["id"], r["status"]) for r in rows] == [("d1", "running")]
    res = flotilla(address, ns, "exec", "d1", "sh", "-c", "test -f /host-etc/hostname && echo mounted; exit 2")
    assert (res.returncode, res.stdout) == (2, "mounted\n"), res.stderr
    res = flotilla(address, ns, "rm", "d1")
    assert res.returncode == 1 and "running task" in res.stderr
    ok(flotilla(address, ns, "kill", "-s", "SIGKILL", "d1"))
    ok(flotilla(address, ns, "rm", "-f", "d1"))
    assert json.loads(ok(flotilla(address, ns, "ps", "--json"))) == []


def test_stores_listings(address: str, ns: str, images: Images) -> None:
    ref = images.ref("busybox")
    ok(flotilla(address, ns, "pull", ref))
    blobs = json.loads(ok(flotilla(address, ns, "content", "ls", "--json")))
    assert len(blobs) == 3 and all(b["digest"].startswith("sha256:") for b in blobs)
    config = next(b for b in blobs if "containerd.io/gc.ref.snapshot.overlayfs" in b["labels"])
    raw = subprocess.run([sys.executable, "-m", "flotilla.cli", "--address", address, "--namespace", ns,
                          "content", "get", config["digest"]], capture_output=True, timeout=60).stdout
    assert json.loads(raw)["architecture"] == "amd64"
    assert json.loads(ok(flotilla(address, ns, "content", "active", "--json"))) == []
    snaps = json.loads(ok(flotilla(address, ns, "snapshots", "ls", "--json")))
    assert [s["kind"] for s in snaps] == ["committed"]
    assert ok(flotilla(address, ns, "snapshots", "ls")).split()[:4] == ["KEY", "PARENT", "KIND", "AGE"]
    assert ns in [n["name"] for n in json.loads(ok(flotilla(address, ns, "namespaces", "ls", "--json")))]


def test_push_to_another_name_and_pull_back(address: str, ns: str, images: Images) -> None:
    ref = images.ref("busybox")
    ok(flotilla(address, ns, "pull", ref))
    copy = images.ref("cli-" + uuid.uuid4().hex[:6], "v2")
    res = flotilla(address, ns, "push", ref, copy)
    assert ok(res).startswith(copy + " sha256:") and "pushed" in res.stderr
    ok(flotilla(address, ns, "rmi", "--sync", ref))
    ok(flotilla(address, ns, "pull", copy))
    res = flotilla(address, ns, "run", "--rm", copy, "r3", "echo", "back")
    assert (res.returncode, res.stdout) == (0, "back\n"), res.stderr


def test_events_stream_as_json_lines(address: str, ns: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "flotilla.cli", "--address", address, "--namespace", ns,
                             "events", "--json", f'topic=="/namespaces/create",namespace=={ns}'],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        for _ in range(100):  # the subscription starts asynchronously: create until it is seen
            other = ns + "-" + uuid.uuid4().hex[:4]
            subprocess.run([sys.executable, "-m", "flotilla.cli", "--address", address, "--namespace", ns,
                            "namespaces", "create", ns], capture_output=True, timeout=60)
            import select
            if select.select([proc.stdout], [], [], 0.2)[0]:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                break
            subprocess.run([sys.executable, "-m", "flotilla.cli", "--address", address, "--namespace", other,
                            "namespaces", "rm", ns], capture_output=True, timeout=60)
        ev = json.loads(line)
        assert ev["topic"] == "/namespaces/create" and ev["payload"]["name"] == ns
    finally:
        proc.terminate()
        proc.wait(10)


def test_pull_with_auth(address: str, ns: str) -> None:
    with Registry(auth=("flo", "tilla")) as r:
        push(r.host, "busybox", "latest", busybox_image(), auth=("flo", "tilla"))
        ref = f"{r.host}/busybox:latest"
        res = flotilla(address, ns, "pull", ref)
        assert res.returncode == 1
        assert "requires credentials" in res.stderr and "none given" in res.stderr, res.stderr
        res = flotilla(address, ns, "pull", "--user", "flo:wrong", ref)
        assert res.returncode == 1 and "authorization failed for user 'flo'" in res.stderr, res.stderr
        ok(flotilla(address, ns, "pull", "--user", "flo:tilla", ref))
        assert ref in ok(flotilla(address, ns, "images", "-q"))
