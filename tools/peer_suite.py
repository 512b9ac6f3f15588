"""``make peer-suite``: containerd's own client test suite (v1.6.20 ``integration/client``, in
``../shared/peer-suite``) against a private Flotilla suite and a private containerd, one
after the other on the same machine, and their results side by side.

    make peer-suite                                   # both daemons, every test (about 25 min)
    make peer-suite PEER_ARGS="--only flotilla -k 'TestContent|TestClientTTRPC'"

The suite's own script builds the test binary once (WORK, default /var/tmp/peer-suite) and
runs each test in its own process; this only starts the daemons and reads its summaries.

The eight tests that start, stop and restart the daemon themselves (``DAEMON_TESTS``) the
script leaves out; this runs them after it, each in its own process and without
``-no-daemon``: the test binary then starts ``containerd`` from its PATH with containerd's
flags and config.toml, and kills and restarts it. For containerd that is Debian's binary; for
Flotilla, first in that PATH only, a ``containerd`` that runs a whole suite in the foreground
(flotilla/testing/daemon.py). They use containerd's test directories (TEST_ROOT, TEST_STATE),
which are emptied after each test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flotilla.testing import ContainerdPeer, PrivateSuite

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO.parent / "shared" / "peer-suite" / "run.sh"
WORK = Path(os.environ.get("WORK", "/var/tmp/peer-suite"))
DAEMON_TESTS = ("TestDaemonRestart", "TestDaemonRestartWithRunningShim", "TestDaemonReconnectsToShimIOPipesOnRestart",
                "TestDaemonRuntimeRoot", "TestDaemonCustomCgroup", "TestRestartMonitor", "TestShimDoesNotLeakPipes",
                "TestShimOOMScore")
# what the test binary's TestMain gives its daemon (client_unix_test.go)
TEST_ROOT, TEST_STATE = Path("/var/lib/containerd-test"), Path("/run/containerd-test")
TEST_ADDRESS = TEST_STATE / "containerd.sock"
DAEMON_TEST_TIMEOUT = 120  # seconds per test: a restart waits for a whole suite to stop and start


def run(label: str, address: str, pattern: str) -> dict[str, tuple[str, str]]:
    env = {**os.environ, "WORK": str(WORK)}
    if (WORK / "client.test").exists():
        env.setdefault("SKIP_BUILD", "1")
    subprocess.run(["bash", str(SCRIPT), address, label, pattern], env=env, cwd=REPO, check=False)
    results = {}
    for line in (WORK / f"summary-{label}.tsv").read_text().splitlines():
        test, result, *rest = line.split("\t")
        results[test] = (result.split("(")[0], rest[-1] if rest else "")
    return results


def stand_in(bin_dir: Path) -> Path:
    """A ``containerd`` in ``bin_dir`` that runs Flotilla (for the test binary's PATH only)."""
    exe = bin_dir / "containerd"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m flotilla.testing.daemon \"$@\"\n")
    exe.chmod(0o755)
    return exe


def run_daemon_tests(label: str, pattern: str, bin_dir: Path | None) -> dict[str, tuple[str, str]]:
    """The tests that start the daemon themselves, each in its own process; ``bin_dir`` comes
    first in their PATH (None: containerd from the machine's PATH)."""
    env = {**os.environ}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    daemon = shutil.which("containerd", path=env["PATH"]) or "containerd"
    out = WORK / f"results-{label}"
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for test in DAEMON_TESTS:
        if not re.search(pattern, test):
            continue
        started, started_at = time.monotonic(), time.time()
        log = out / f"{test}.log"
        with open(log, "wb") as f:
            try:
                rc = subprocess.run([str(WORK / "client.test"), "-test.root", "-test.v", "-test.run", f"^{test}$",
                                     "-test.timeout", f"{DAEMON_TEST_TIMEOUT}s"], env=env, stdout=f,
                                    stderr=subprocess.STDOUT, timeout=DAEMON_TEST_TIMEOUT + 60).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        text = log.read_text(errors="replace")
        clean_test_dirs(test, daemon, env)
        if test == "TestDaemonCustomCgroup":
            remove_new_cgroups(started_at)
        remove_daemon_logs(started_at)
        result = verdict(test, text, rc)
        results[test] = (result, "" if result == "PASS" else first_error(text))
        print(f"{test} {results[test][0]} {time.monotonic() - started:.0f}s {results[test][1]}", flush=True)
    return results


def verdict(test: str, text: str, rc: int) -> str:
    """As run.sh reads a test's output."""
    if "panic: test timed out" in text or rc in (124, 137):
        return "HANG"
    for result in ("FAIL", "SKIP"):
        if f"--- {result}: {test} " in text:
            return result
    return "PASS" if f"--- PASS: {test} " in text and rc == 0 else f"FAIL(rc={rc})"


def first_error(text: str) -> str:
    for line in text.splitlines():
        if re.match(r"\s+\w+\.go:\d+: |panic: |rpc error", line) and "log_hook.go" not in line:
            return line.strip()[:300]
    return ""


def test_paths(test: str) -> tuple[str, ...]:
    """Where a test's daemon keeps its state: TestMain's directories, or the test's t.TempDir()."""
    return (f"{TEST_ROOT}/", f"{TEST_STATE}/", f"{tempfile.gettempdir()}/{test}")


def leftovers(test: str) -> list[int]:
    """Processes started for the test daemon's containers (their shims name its directories)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and any(p.encode() in (entry / "cmdline").read_bytes() for p in test_paths(test)):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def clean_test_dirs(test: str, daemon: str, env: dict[str, str]) -> None:
    """Leave nothing of a test: containers a failed test left are removed through the daemon
    (started once more for it), then every mount under the test's directories, then those."""
    if leftovers(test) and TEST_ROOT.exists():
        proc = subprocess.Popen([daemon, "--root", str(TEST_ROOT), "--state", str(TEST_STATE),
                                 "--address", str(TEST_ADDRESS)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            ctr = ["ctr", "--address", str(TEST_ADDRESS), "-n", "testing"]
            for _ in range(120):
                if subprocess.run([*ctr, "version"], capture_output=True, timeout=30).returncode == 0:
                    break
                time.sleep(0.5)
            tasks = subprocess.run([*ctr, "t", "ls", "-q"], capture_output=True, text=True).stdout.split()
            for task in tasks:
                subprocess.run([*ctr, "t", "kill", "-a", "-s", "SIGKILL", task], capture_output=True)
            time.sleep(1)
            for task in tasks:
                subprocess.run([*ctr, "t", "rm", "-f", task], capture_output=True)
            for c in subprocess.run([*ctr, "c", "ls", "-q"], capture_output=True, text=True).stdout.split():
                subprocess.run([*ctr, "c", "rm", c], capture_output=True)
        finally:
            proc.terminate()
            proc.wait(60)
    for pid in leftovers(test):  # what no daemon removed
        print(f"  killing leftover process {pid}", flush=True)
        os.kill(pid, 9)
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mnt in sorted(mounts, key=len, reverse=True):
        if mnt.startswith(test_paths(test)):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    for d in (TEST_ROOT, TEST_STATE, *Path(tempfile.gettempdir()).glob(f"{test}[0-9]*")):
        shutil.rmtree(d, ignore_errors=True)


def remove_daemon_logs(since: float) -> None:
    """The files a test made for its daemon, which it leaves in the temporary directory: its
    output (Go's os.CreateTemp("", ""): digits only) and its config (containerd-config-*)."""
    for f in Path(tempfile.gettempdir()).iterdir():
        made_by_test = f.name.isdigit() or (f.name.startswith("containerd-config-") and f.name[18:].isdigit())
        with contextlib.suppress(OSError):
            if made_by_test and f.is_file() and f.stat().st_mtime >= since:
                f.unlink()


def remove_new_cgroups(since: float) -> None:
    """The cgroup TestDaemonCustomCgroup names (digits) is removed by the test only once its
    daemon answered; an empty one made since the test began is removed here otherwise."""
    for cg in Path("/sys/fs/cgroup").glob("*/[0-9]*"):
        if cg.name.isdigit() and cg.is_dir() and cg.stat().st_ctime >= since:
            try:
                cg.rmdir()
            except OSError:
                pass


def table(by_daemon: dict[str, dict[str, tuple[str, str]]]) -> str:
    names = list(by_daemon)
    tests = sorted({t for r in by_daemon.values() for t in r})
    lines = ["| test | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for t in tests:
        cells = [by_daemon[n].get(t, ("-", ""))[0] for n in names]
        if len(set(cells)) > 1 or "PASS" not in cells:  # only where they differ or none passes
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    totals = []
    for n in names:
        counts: dict[str, int] = {}
        for result, _ in by_daemon[n].values():
            counts[result] = counts.get(result, 0) + 1
        totals.append(f"{n}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines) + "\n\n" + "; ".join(totals)


def stop_registry() -> None:
    """End the registry the suite's script started (it leaves it running for the next run)."""
    pid_file = WORK / "registry.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peer-suite", description=__doc__)
    parser.add_argument("-k", dest="pattern", default=".", help="a regular expression of test names")
    parser.add_argument("--only", choices=("flotilla", "containerd"))
    args = parser.parse_args(argv)
    if not SCRIPT.exists():
        print(f"peer-suite: {SCRIPT} is missing", file=sys.stderr)
        return 2
    results: dict[str, dict[str, tuple[str, str]]] = {}
    if args.only in (None, "containerd"):
        with ContainerdPeer() as peer:
            results["containerd"] = run("containerd", peer.address, args.pattern)
        results["containerd"].update(run_daemon_tests("containerd", args.pattern, None))
    if args.only in (None, "flotilla"):
        with PrivateSuite() as suite:
            results["flotilla"] = run("flotilla", suite.address, args.pattern)
        with tempfile.TemporaryDirectory(prefix="peer-suite-bin-") as bin_dir:
            stand_in(Path(bin_dir))
            results["flotilla"].update(run_daemon_tests("flotilla", args.pattern, Path(bin_dir)))
    stop_registry()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
