"""``make peer-suite``: containerd's own client test suite (v1.6.20 ``integration/client``, in
``../shared/peer-suite``) against a private Flotilla suite and a private containerd, one
after the other on the same machine, and their results side by side.

    make peer-suite                                   # both daemons, every test (about 25 min)
    make peer-suite PEER_ARGS="--only flotilla -k 'TestContent|TestClientTTRPC'"

The suite's own script builds the test binary once (WORK, default /var/tmp/peer-suite) and
runs each test in its own process; this only starts the daemons and reads its summaries.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from flotilla.testing import ContainerdPeer, PrivateSuite

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO.parent / "shared" / "peer-suite" / "run.sh"
WORK = Path(os.environ.get("WORK", "/var/tmp/peer-suite"))


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
    if args.only in (None, "flotilla"):
        with PrivateSuite() as suite:
            results["flotilla"] = run("flotilla", suite.address, args.pattern)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
