"""deploy/supervise.py: supervisord with a quicker start and stop. Here: a SIGTERM is seen at
once, and ``on_stop`` runs as the shutdown begins, while programs are still stopping (the
containerd stand-in removes its socket there)."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

_RUN = """
import sys
from pathlib import Path
from flotilla.deploy.supervise import main
main(["-n", "-c", sys.argv[1]], stop_together=True, on_stop=lambda: Path(sys.argv[2]).touch())
"""


def test_on_stop_runs_as_the_shutdown_begins_while_a_program_still_stops(tmp_path: Path) -> None:
    started, stopping, marker = tmp_path / "started", tmp_path / "stopping", tmp_path / "on_stop"
    # a program that takes 3 s to stop after its SIGTERM, and says when it got it
    program = (f"touch {started}; trap 'touch {stopping}; sleep 3; exit 0' TERM; "
               "while true; do sleep 0.1; done")
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"""[supervisord]
logfile={tmp_path / 'supervisord.log'}
pidfile={tmp_path / 'supervisord.pid'}
childlogdir={tmp_path}
[program:slow]
command=/bin/sh -c "{program}"
startsecs=0
stopwaitsecs=10
stopasgroup=true
killasgroup=true
""")
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(conf), str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if started.exists():
                break
            time.sleep(0.02)
        assert started.exists()
        proc.send_signal(signal.SIGTERM)
        for _ in range(500):
            if marker.exists():
                break
            time.sleep(0.01)
        assert marker.exists() and proc.poll() is None  # on_stop came first: the program still stops
        assert proc.wait(30) == 0
        assert stopping.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_socket_appears_listening_and_replaces_a_stale_one(tmp_path: Path) -> None:
    from flotilla.deploy.supervise import _listening_unix_socket
    path = tmp_path / "g.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: a client would be refused
    sock = _listening_unix_socket(str(path), 0o660, None, 16)
    try:
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o660
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # queued in the backlog: accepted by nobody yet, not refused
        assert sorted(p.name for p in tmp_path.iterdir()) == ["g.sock"]
    finally:
        sock.close()
