"""The containerd stand-in (flotilla/testing/daemon.py): containerd's flags and config.toml,
and the suite it renders. Its start, kill and restart run in tools/peer_suite.py."""

from __future__ import annotations

from pathlib import Path

from flotilla.deploy import Suite
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
