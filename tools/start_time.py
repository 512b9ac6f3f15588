"""How long a daemon takes from its exec until it answers gRPC health, and to stop on
SIGTERM: Flotilla through its ``containerd`` stand-in (flotilla/testing/daemon.py), the
way containerd's own daemon-restart tests start it, and Debian's containerd, side by side.

    .venv/bin/python tools/start_time.py [--runs 5] [--only flotilla|containerd]

Each run gets fresh root, state and socket directories under a temporary directory; health is
asked every 10 ms on a new connection each time (a client's reconnection backoff would
otherwise be measured too). containerd's Go client gives its first connection about 1 s for
the whole handshake (docs/compatibility.md), which is the figure that matters.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flotilla.testing import serving

POLL = 0.01
LIMIT = 30.0  # seconds a start may take before the run counts as failed


def daemon_command(kind: str) -> list[str]:
    if kind == "flotilla":
        return [sys.executable, "-m", "flotilla.testing.daemon"]
    return [shutil.which("containerd") or "/usr/bin/containerd"]


def one_start(kind: str, work: Path, settle: float) -> tuple[float, float, float]:
    """Seconds from exec until the socket exists, until health answers, and to stop
    (SIGTERM ``settle`` seconds after health answered)."""
    root, state = work / "root", work / "state"
    socket = state / "containerd.sock"
    config = work / "config.toml"
    config.write_text(f'version = 2\nroot = "{root}"\nstate = "{state}"\n[grpc]\n  address = "{socket}"\n'
                      '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n')
    log = open(work / "daemon.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen([*daemon_command(kind), "--config", str(config), "--root", str(root),
                             "--state", str(state), "--address", str(socket)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    socket_at = health_at = math.nan  # nan: never (a run past LIMIT, or a daemon that died)
    try:
        deadline = started + LIMIT
        while time.monotonic() < deadline and proc.poll() is None:
            if math.isnan(socket_at) and socket.exists():
                socket_at = time.monotonic() - started
            if not math.isnan(socket_at) and serving(socket):
                health_at = time.monotonic() - started
                break
            time.sleep(POLL)
        time.sleep(settle)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return socket_at, health_at, time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--only", choices=("flotilla", "containerd"))
    p.add_argument("--settle", type=float, default=0.0, help="seconds between health and SIGTERM")
    args = p.parse_args()
    kinds = [args.only] if args.only else ["flotilla", "containerd"]
    print("daemon       socket (s)          health (s)          stop (s)")
    for kind in kinds:
        figures = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="start-time-") as tmp:
                figures.append(one_start(kind, Path(tmp), args.settle))
        cols = []
        for i in range(3):
            values = [f[i] for f in figures]
            cols.append(f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]")
        print(f"{kind:<12} " + "  ".join(f"{c:<18}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
