"""A ``containerd`` that is a whole Flotilla suite, for the tests of containerd's own client
suite that start, stop and restart the daemon themselves (tools/peer_suite.py puts a
``containerd`` that runs this first in the test binary's PATH, and nowhere else).

It reads containerd's flags (``--root --state --address --config``; the rest is ignored) and
the config.toml those tests write (``root``, ``state``, ``grpc.address``, ``oom_score``,
``[cgroup] path``), renders a suite with those directories and that socket, and then becomes
its supervisord in the foreground (exec: the pid the tests hold is supervisord's):

* SIGTERM stops the suite, every program as ``flotilla down`` stops it;
* SIGKILL ends supervisord, and each program with it (its parent-death signal,
  ``Suite.pdeathsig``), while containers and their supervisors (flotilla-shim, started by
  the runtime service, with no such signal) stay, as containerd's shims outlive a killed
  containerd;
* started again on the same directories, the suite finds the tasks it left.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict]:  # type: ignore[type-arg]
    p = argparse.ArgumentParser(prog="containerd", add_help=False)
    p.add_argument("-c", "--config", default="")
    p.add_argument("-a", "--address", default="")
    p.add_argument("--root", default="")
    p.add_argument("--state", default="")
    p.add_argument("-l", "--log-level", default="")
    args, _ = p.parse_known_args(argv)
    conf: dict = {}  # type: ignore[type-arg]
    if args.config:
        with open(args.config, "rb") as f:
            conf = tomllib.load(f)
    # containerd's precedence: a flag over the file, the file over the default
    args.root = args.root or conf.get("root") or "/var/lib/containerd"
    args.state = args.state or conf.get("state") or "/run/containerd"
    args.address = args.address or conf.get("grpc", {}).get("address") or "/run/containerd/containerd.sock"
    return args, conf


def cgroup_hierarchies() -> list[Path]:
    """Where this process' own cgroup lives: the unified root, or each v1 hierarchy."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, post = line.partition(" - ")
            kind, mnt = post.split()[0], Path(fields.split()[4])
            if mnt == CGROUP_ROOT and kind == "cgroup2":
                return [mnt]
            if kind == "cgroup" and mnt.parent == CGROUP_ROOT:
                points.append(mnt)
    return points


def join_cgroup(path: str) -> None:
    """containerd's ``[cgroup] path``: the daemon moves itself into that cgroup (made in every
    hierarchy); what it starts afterwards starts there too."""
    for hierarchy in cgroup_hierarchies():
        cg = hierarchy / path.strip("/")
        cg.mkdir(parents=True, exist_ok=True)
        if "cpuset" in hierarchy.name.split(","):  # a new cpuset has no cpus until given some
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if not (cg / knob).read_text().strip():
                    (cg / knob).write_text((cg.parent / knob).read_text())
        (cg / "cgroup.procs").write_text(str(os.getpid()))


def main(argv: list[str]) -> None:
    args, conf = parse(argv)
    address = Path(args.address)
    # containerd replaces a socket left by a killed predecessor at once; a client that finds
    # the stale file meanwhile gets "connection refused" and gives up, one that finds none waits
    if address.is_socket():
        address.unlink()
    if conf.get("oom_score"):
        Path("/proc/self/oom_score_adj").write_text(str(conf["oom_score"]))
    if conf.get("cgroup", {}).get("path"):
        join_cgroup(conf["cgroup"]["path"])

    from flotilla.deploy import SERVICES, Suite, free_port  # after the socket is gone: 0.2 s

    root, state = Path(args.root), Path(args.state)
    suite = Suite(root=root, state=state, listen=address, nats_port=free_port(), metrics_base=0,
                  # one prefix per root, the same at each start: nothing else names this suite
                  prefix="cd" + hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8],
                  isolated=True, cluster=None, services=tuple(name for name, _ in SERVICES),
                  # one gateway: a second serves while the first restarts, and this daemon only
                  # ever restarts whole; at a cold start it took the CPU the first one needs
                  # (health answered after 2.0-2.2 s with one, 2.6-5.9 s with two, here)
                  pdeathsig=True, console=True, instances={"gateway": 1},
                  # as containerd stopping, its calls are cut, not drained: a client's open Wait
                  # ends ("transport is closing") and the restart takes no 20 s
                  extra_env={"FLOTILLA_DRAIN_GRACE": "0"})
    address.parent.mkdir(parents=True, exist_ok=True)
    suite.render()

    def remove_sockets() -> None:
        """As containerd's listeners closing as it stops: a client dialing from now on finds
        no socket and waits for the next daemon (containerd's dialer retries while the file
        is missing), where one finding ours would wait in a backlog no gateway takes any more,
        and fail when it closes."""
        for path in (address, Path(f"{address}.ttrpc")):
            if path.is_socket():
                path.unlink()

    try:
        supervise(suite.conf, remove_sockets)
    finally:
        remove_sockets()


def supervise(conf: Path, on_stop: Callable[[], None]) -> None:
    """Become the suite's supervisord, in the foreground, in this process."""
    from flotilla.deploy import supervise as supervisor
    supervisor.main(["-n", "-c", str(conf)], stop_together=True, on_stop=on_stop)


if __name__ == "__main__":
    main(sys.argv[1:])
    # as the services do: the test restarting this daemon waits for its exit, and then for
    # the next one's start, within its client's reconnection deadline
    from flotilla.libs.process import exit_without_teardown
    exit_without_teardown()
