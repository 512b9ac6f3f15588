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
    elif args.command == "restart":
        try:
            took = suite.restart(args.component)
        except ValueError as exc:
            print(f"flotilla: {exc}", file=sys.stderr)
            return 2
        print(f"{args.component} restarted; the suite answered again after {took:.2f}s")
    elif args.command == "status":
        if suite.pid() is None:
            print("flotilla is not running")
            return 3
        print(suite.ctl("status").stdout, end="")
    elif args.command == "logs":
        files = sorted(str(p) for p in suite.logs.glob("*.log"))
        return subprocess.call(["tail", "-n", "50", *(["-F"] if args.follow else []), *files])
    return 0


def _credentials(args: argparse.Namespace) -> int:
    from flotilla.deploy.credentials import Permissions, grants_for
    suite = Suite()
    if args.credentials_command == "create":
        try:
            publish, subscribe = grants_for(suite.prefix, suite.host, args.service, args.publish, args.subscribe)
            if not publish and not subscribe:
                raise ValueError("give --service, --publish or --subscribe")
            seed = suite.grant(args.name, Permissions(publish, subscribe))
        except ValueError as exc:
            print(f"flotilla credentials create: {exc}", file=sys.stderr)
            return 2
        print(f"{args.name}: seed {seed}; connect with nkeys_seed={seed} and inbox_prefix=_INBOX.{args.name}")
    elif args.credentials_command == "ls":
        for name, perms in suite.credentials.integrators().items():
            print(f"{name}\tpublish={','.join(perms.publish)}\tsubscribe={','.join(perms.subscribe)}")
    elif args.credentials_command == "rm":
        if not suite.revoke(args.name):
            print(f"flotilla credentials rm: {args.name}: no such credential", file=sys.stderr)
            return 1
    return 0


def _farm(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flotilla.deploy.farm import make_ca, make_cert
    if args.farm_command == "ca":
        print(make_ca(Path(args.dir)))
    else:
        print(make_cert(Path(args.dir), args.name, args.ip, args.dns or None,
                        Path(args.out) if args.out else None))
    return 0


def main(argv: list[str] | None = None) -> int:
    from flotilla import cmd
    from flotilla.cmd import network as network_cmd

    parser = argparse.ArgumentParser(prog="flotilla", description=__doc__)
    cmd.connection_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the suite in the background")
    sub.add_parser("down", help="stop the suite (data is kept)")
    sub.add_parser("status", help="show the suite's processes")
    restart = sub.add_parser("restart", help="restart one component gracefully, one instance at a time "
                                             "(clients' calls are drained, not failed)")
    restart.add_argument("component",
                         help="nats, metadata, content, snapshots, runtime, transfer, network or gateway")
    logs = sub.add_parser("logs", help="show the suite's logs")
    logs.add_argument("-f", "--follow", action="store_true")
    content = sub.add_parser("content", help="content store tools")
    content_sub = content.add_subparsers(dest="content_command", required=True)
    verify = content_sub.add_parser("verify", help="report corrupted or orphaned blobs (exit 1 if any)")
    verify.add_argument("--root", default=None, help="data root (default: FLOTILLA_ROOT or /var/lib/flotilla)")
    verify.add_argument("--quick", action="store_true", help="check sizes only, do not rehash")
    verify.add_argument("--json", action="store_true")
    creds = sub.add_parser("credentials", help="the bus' credentials for integrators (docs/security.md)")
    creds_sub = creds.add_subparsers(dest="credentials_command", required=True)
    create = creds_sub.add_parser("create", help="issue a credential (or change its permissions)")
    create.add_argument("name")
    create.add_argument("--service", action="append", default=[],
                        help="may call this service: metadata, content, snapshots, runtime, transfer, network; "
                             "'events' to watch events (repeatable)")
    create.add_argument("--publish", action="append", default=[], help="a subject it may publish to (repeatable)")
    create.add_argument("--subscribe", action="append", default=[], help="a subject it may subscribe to (repeatable)")
    creds_sub.add_parser("ls", help="list the integrators' credentials")
    rm = creds_sub.add_parser("rm", help="revoke a credential")
    rm.add_argument("name")
    farm = sub.add_parser("farm", help="the farm's CA and host certificates (docs/security.md)")
    farm_sub = farm.add_subparsers(dest="farm_command", required=True)
    ca = farm_sub.add_parser("ca", help="make a farm CA in DIR")
    ca.add_argument("dir")
    cert = farm_sub.add_parser("cert", help="issue a host's route certificate from the CA in DIR")
    cert.add_argument("dir")
    cert.add_argument("name")
    cert.add_argument("--ip", action="append", default=[], help="the host's route address (repeatable)")
    cert.add_argument("--dns", action="append", default=[])
    cert.add_argument("--out", help="where to write NAME.pem, NAME-key.pem and ca.pem (default: DIR)")
    cmd.register(sub, content_sub)  # pull, push, images, run, ps, ... over flotilla.client
    network_cmd.register(sub)  # network create|ls|inspect|rm|..., run --net/-p
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return cmd.run(args)
    if args.command == "credentials":
        return _credentials(args)
    if args.command == "farm":
        return _farm(args)
    if args.command == "content":
        from pathlib import Path

        from flotilla.services.content.verify import main as verify_main
        return verify_main(Path(args.root) if args.root else Suite().root, not args.quick, args.json)
    return _suite_commands(args)


if __name__ == "__main__":
    sys.exit(main())
