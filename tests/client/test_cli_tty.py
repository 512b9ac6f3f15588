"""`flotilla run -t` is interactive: driven through a real terminal (tmux)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .conftest import Images
from .test_cli import flotilla, ok


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _until(session: str, text: str, tries: int = 600) -> str:
    for _ in range(tries):  # bounded wait for the terminal to show ``text``
        screen = _pane(session)
        if text in screen:
            return screen
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared:\n{_pane(session)}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_run_t_is_an_interactive_shell(address: str, ns: str, images: Images, tmp_path: Path) -> None:
    ref = images.ref("busybox")
    ok(flotilla(address, ns, "pull", ref))
    session = "flotilla-" + uuid.uuid4().hex[:8]
    status = tmp_path / "status"
    cmd = (f"{sys.executable} -m flotilla.cli --address {address} --namespace {ns} run -t --rm {ref} "
           f"tty-{uuid.uuid4().hex[:6]} sh; echo $? > {status}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True)
    try:
        _until(session, "#")  # the shell's prompt
        subprocess.run(["tmux", "send-keys", "-t", session, "tty -s && echo on-a-tty-$((6*7))", "Enter"], check=True)
        _until(session, "on-a-tty-42")
        subprocess.run(["tmux", "send-keys", "-t", session, "exit 5", "Enter"], check=True)
        for _ in range(600):
            if status.exists() and status.read_text().strip():
                break
            time.sleep(0.05)
        assert status.read_text().strip() == "5"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
