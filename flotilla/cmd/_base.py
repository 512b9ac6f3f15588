"""What every client command shares: connection options, errors, tables and ``--json``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from flotilla.client import DEFAULT_ADDRESS, Client, FlotillaError
from flotilla.client.types import jsonable

Handler = Callable[[Client, argparse.Namespace], Awaitable[int | None]]


def connection_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--address``/``--namespace`` before or after the subcommand."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--address", "-a", default=default,
                        help=f"server socket (default: $FLOTILLA_ADDRESS or {DEFAULT_ADDRESS})")
    parser.add_argument("--namespace", "-n", default=default,
                        help="namespace (default: $FLOTILLA_NAMESPACE or default)")


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def command(sub: Any, name: str, handler: Handler, help: str, **kw: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kw)
    connection_options(p)
    p.set_defaults(handler=handler)
    return p


def run(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get("FLOTILLA_ADDRESS") or DEFAULT_ADDRESS
    namespace = args.namespace or os.environ.get("FLOTILLA_NAMESPACE") or "default"

    async def main() -> int:
        async with Client(address, namespace) as client:
            return int(await args.handler(client, args) or 0)

    try:
        return asyncio.run(main())
    except FlotillaError as exc:
        print(f"flotilla: {exc.message}", file=sys.stderr)
        if "no such file" in exc.message.lower() or "failed to connect" in exc.message.lower():
            print(f"flotilla: is a server listening on {address}? (flotilla up, or --address)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `flotilla content ls | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def ago(when: _dt.datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (_dt.datetime.now(_dt.timezone.utc) - when).total_seconds()
    for span, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def output(args: argparse.Namespace, records: Sequence[Any], headers: Sequence[str],
           row: Callable[[Any], Sequence[object]]) -> None:
    """A listing: JSON with ``--json``, else an aligned table."""
    if getattr(args, "json", False):
        print(json.dumps(jsonable(list(records)), indent=2, sort_keys=True))
        return
    rows = [[str(c) for c in row(r)] for r in records]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for line in [list(headers)] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
