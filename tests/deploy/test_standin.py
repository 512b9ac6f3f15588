"""The containerd stand-in (flotilla/testing/daemon.py): containerd's flags and config.toml,
the suite it renders, and a stop and start as containerd's daemon-restart tests make them
(which themselves run in tools/peer_suite.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flotilla.deploy import Suite
from flotilla.testing import serving
from flotilla.testing.daemon import parse


def test_flags_win_over_the_file_which_wins_over_the_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('version = 2\nroot = "/r"\n[grpc]\n  address = "/a.sock"\n[cgroup]\n  path = "x"\n')
    args, toml = parse(["-c", str(conf), "--root", "/flag-root", "--log-level", "debug"])
    assert (args.root, args.state, args.address) == ("/flag-root", "/run/containerd", "/a.sock")
    assert toml["cgroup"]["path"] == "x"
    args, _ = parse(["--config", str(conf), "--address", "/b.sock"])
    assert (args.root, args.address) == ("/r", "/b.sock")


def test_the_socket_and_parent_death_signal_are_rendered(tmp_path: Path) -> None:
    suite = Suite(root=tmp_path / "root", state=tmp_path / "state", listen=tmp_path / "c.sock",
                  nats_port=1, metrics_base=0, isolated=True, auth=False, cluster=None, pdeathsig=True)
    suite.render()
    text = suite.conf.read_text()
    assert f"socket=unix://{tmp_path / 'c.sock'}" in text
    assert f'FLOTILLA_SOCKET="{tmp_path / "c.sock"}"' in text
    commands = [line for line in text.splitlines() if line.startswith("command=")]
    assert commands and all("--pdeathsig KILL -- " in line for line in commands)


def _start(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "flotilla.testing.daemon", "--config", str(conf)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _until(what: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.02)
    return False


def test_a_restart_the_way_containerds_tests_make_one(tmp_path: Path) -> None:
    """Started, it answers health on containerd's socket; at SIGTERM it exits 0 and its
    sockets are gone (the moment they go is tests/deploy/test_supervise.py's); started again
    on the same directories, it answers again."""
    socket = tmp_path / "state" / "containerd.sock"
    conf = tmp_path / "config.toml"
    conf.write_text(f'version = 2\nroot = "{tmp_path / "root"}"\nstate = "{tmp_path / "state"}"\n'
                    f'[grpc]\n  address = "{socket}"\n')
    log = tmp_path / "daemon.log"
    procs = []
    try:
        for _ in range(2):
            proc = _start(conf, log)
            procs.append(proc)
            assert _until(lambda: socket.exists() and serving(socket), 60), log.read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
            assert not socket.exists() and not Path(f"{socket}.ttrpc").exists()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
