"""The ``flotilla`` command."""

from __future__ import annotations

import argparse
import subprocess
import sys

from flotilla.deploy import Suite


def _suite_commands(args: argparse.Namespace) -> int:
    suite = Suite()
    if args.command == "up":
        seconds = suite.up()
        print(f"flotilla is up: {suite.socket} (answered after {seconds:.2f}s)")
    elif args.command == "down":
        suite.down()
        print("flotilla is down")
    elif args.command == "status":
        if suite.pid() is None:
            print("flotilla is not running")
            return 3
        print(suite.ctl("status").stdout, end="")
    elif args.command == "logs":
        files = sorted(str(p) for p in suite.logs.glob("*.log"))
        return subprocess.call(["tail", "-n", "50", *(["-F"] if args.follow else []), *files])
    return 0


def main(argv: list[str] | None = None) -> int:
    from flotilla import cmd

    parser = argparse.ArgumentParser(prog="flotilla", description=__doc__)
    cmd.connection_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the suite in the background")
    sub.add_parser("down", help="stop the suite (data is kept)")
    sub.add_parser("status", help="show the suite's processes")
    logs = sub.add_parser("logs", help="show the suite's logs")
    logs.add_argument("-f", "--follow", action="store_true")
    content = sub.add_parser("content", help="content store tools")
    content_sub = content.add_subparsers(dest="content_command", required=True)
    verify = content_sub.add_parser("verify", help="report corrupted or orphaned blobs (exit 1 if any)")
    verify.add_argument("--root", default=None, help="data root (default: FLOTILLA_ROOT or /var/lib/flotilla)")
    verify.add_argument("--quick", action="store_true", help="check sizes only, do not rehash")
    verify.add_argument("--json", action="store_true")
    cmd.register(sub, content_sub)  # pull, push, images, run, ps, ... over flotilla.client
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return cmd.run(args)
    if args.command == "content":
        from pathlib import Path

        from flotilla.services.content.verify import main as verify_main
        return verify_main(Path(args.root) if args.root else Suite().root, not args.quick, args.json)
    return _suite_commands(args)


if __name__ == "__main__":
    sys.exit(main())
