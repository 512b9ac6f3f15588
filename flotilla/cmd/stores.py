"""content, snapshots, namespaces, events."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flotilla.client import Client
from flotilla.client.types import jsonable

from ._base import ago, command, human_size, json_option, labels_text, output


# ---- content (added next to `content verify`)
async def content_ls(client: Client, args: argparse.Namespace) -> int:
    infos = await client.content.list(*args.filters)
    output(args, infos, ["DIGEST", "SIZE", "AGE", "LABELS"],
           lambda i: [i.digest, human_size(i.size), ago(i.created_at), labels_text(i.labels)])
    return 0


async def content_get(client: Client, args: argparse.Namespace) -> int:
    async for chunk in client.content.read(args.digest):
        sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    return 0


async def content_rm(client: Client, args: argparse.Namespace) -> int:
    for d in args.digests:
        await client.content.delete(d)
        print(d)
    return 0


async def content_active(client: Client, args: argparse.Namespace) -> int:
    statuses = await client.content.statuses(*args.filters)
    output(args, statuses, ["REF", "OFFSET", "TOTAL", "EXPECTED"],
           lambda s: [s.ref, human_size(s.offset), human_size(s.total) if s.total else "-", s.expected or "-"])
    return 0


# ---- snapshots
async def snapshots_ls(client: Client, args: argparse.Namespace) -> int:
    infos = await client.snapshots(args.snapshotter).list(*args.filters)
    output(args, infos, ["KEY", "PARENT", "KIND", "AGE"],
           lambda i: [i.name, i.parent or "-", i.kind, ago(i.created_at)])
    return 0


async def snapshots_info(client: Client, args: argparse.Namespace) -> int:
    snaps = client.snapshots(args.snapshotter)
    info = await snaps.stat(args.key)
    data: dict[str, Any] = jsonable(info)
    data["usage"] = jsonable(await snaps.usage(args.key))
    if info.kind != "committed":
        data["mounts"] = jsonable(await snaps.mounts(args.key))
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


async def snapshots_rm(client: Client, args: argparse.Namespace) -> int:
    for key in args.keys:
        await client.snapshots(args.snapshotter).remove(key)
        print(key)
    return 0


# ---- namespaces
async def namespaces_ls(client: Client, args: argparse.Namespace) -> int:
    output(args, await client.namespaces.list(), ["NAME", "LABELS"], lambda n: [n.name, labels_text(n.labels)])
    return 0


def _labels(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in items)


async def namespaces_create(client: Client, args: argparse.Namespace) -> int:
    await client.namespaces.create(args.name, _labels(args.labels))
    return 0


async def namespaces_label(client: Client, args: argparse.Namespace) -> int:
    await client.namespaces.set_labels(args.name, _labels(args.labels))
    return 0


async def namespaces_rm(client: Client, args: argparse.Namespace) -> int:
    for name in args.names:
        await client.namespaces.delete(name)
        print(name)
    return 0


# ---- events
async def events(client: Client, args: argparse.Namespace) -> int:
    async for ev in client.events.subscribe(*args.filters):
        if args.json:
            print(json.dumps(jsonable(ev), sort_keys=True), flush=True)
        else:
            when = ev.timestamp.isoformat() if ev.timestamp else "-"
            print(f"{when} {ev.namespace} {ev.topic} {json.dumps(ev.payload, sort_keys=True)}", flush=True)
    return 0


def _group(sub: Any, name: str, help: str) -> Any:
    p = sub.add_parser(name, help=help, description=help)
    return p.add_subparsers(dest=f"{name}_command", required=True)


def register_content(content_sub: Any) -> None:
    p = command(content_sub, "ls", content_ls, "list blobs")
    p.add_argument("filters", nargs="*")
    json_option(p)
    p = command(content_sub, "get", content_get, "write a blob to stdout")
    p.add_argument("digest")
    p = command(content_sub, "rm", content_rm, "remove blobs")
    p.add_argument("digests", nargs="+")
    p = command(content_sub, "active", content_active, "list ingests in progress")
    p.add_argument("filters", nargs="*")
    json_option(p)


def register(sub: Any) -> None:
    snaps = _group(sub, "snapshots", "snapshot tools")
    for name, fn, help in (("ls", snapshots_ls, "list snapshots"), ("info", snapshots_info, "one snapshot"),
                           ("rm", snapshots_rm, "remove snapshots")):
        p = command(snaps, name, fn, help)
        p.add_argument("--snapshotter", default="overlayfs")
        if name == "ls":
            p.add_argument("filters", nargs="*")
            json_option(p)
        elif name == "info":
            p.add_argument("key")
        else:
            p.add_argument("keys", nargs="+")

    ns = _group(sub, "namespaces", "namespace tools")
    p = command(ns, "ls", namespaces_ls, "list namespaces")
    json_option(p)
    p = command(ns, "create", namespaces_create, "create a namespace")
    p.add_argument("name")
    p.add_argument("labels", nargs="*", help="key=value")
    p = command(ns, "label", namespaces_label, "set (key=value) or remove (key=) labels")
    p.add_argument("name")
    p.add_argument("labels", nargs="+")
    p = command(ns, "rm", namespaces_rm, "remove namespaces")
    p.add_argument("names", nargs="+")

    p = command(sub, "events", events, "print events as they happen (filters: containerd's syntax)")
    p.add_argument("filters", nargs="*")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
