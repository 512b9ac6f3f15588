"""pull, push, images, rmi."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from flotilla.client import Client, Credentials, PullOptions, PushOptions
from flotilla.client.imageutil import platforms_of
from flotilla.libs.distribution import platforms

from ._base import command, human_size, json_option, output
from .progress import ProgressView


def _credentials(args: argparse.Namespace) -> Credentials | None:
    if not args.user:
        return None
    if ":" not in args.user:
        return Credentials(args.user, getpass.getpass(f"password for {args.user}: "))
    return Credentials.parse(args.user)


def _registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", "-u", help="registry credentials as user[:password]")
    p.add_argument("--plain-http", action="store_true", default=None,
                   help="plain HTTP (default for 127.0.0.1/localhost registries)")


async def pull(client: Client, args: argparse.Namespace) -> int:
    view = ProgressView()
    image = await client.pull(args.ref, PullOptions(
        platform=platforms.parse(args.platform) if args.platform else None,
        all_platforms=args.all_platforms, unpack=not args.no_unpack, snapshotter=args.snapshotter,
        credentials=_credentials(args), plain_http=args.plain_http, concurrency=args.max_concurrent_downloads,
        progress=view), server_side=False if args.client_side else None)
    view.finish(image.name)
    print(f"{image.name} {image.target.digest}")
    return 0


async def push(client: Client, args: argparse.Namespace) -> int:
    view = ProgressView()
    top = await client.push(args.local, args.remote or args.local, PushOptions(
        credentials=_credentials(args), plain_http=args.plain_http, progress=view),
        server_side=False if args.client_side else None)
    view.finish(args.remote or args.local, "pushed")
    print(f"{args.remote or args.local} {top.digest}")
    return 0


async def images(client: Client, args: argparse.Namespace) -> int:
    listed = await client.images.list(*args.filters)
    if args.quiet:
        for img in listed:
            print(img.name)
        return 0
    rows: list[dict[str, Any]] = []
    for img in listed:
        try:
            size = (await client.resolve_image(img.name)).size
        except Exception:  # noqa: BLE001 - a partial image lists with an unknown size
            size = -1
        rows.append({"name": img.name, "digest": img.target.digest, "media_type": img.target.media_type,
                     "size": size, "platforms": await platforms_of(client.content, img.target),
                     "labels": img.labels, "created_at": img.created_at})
    output(args, rows, ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS"], lambda r: [
        r["name"], r["media_type"].rsplit(".", 2)[-2] if "." in r["media_type"] else r["media_type"],
        r["digest"][:19], human_size(r["size"]) if r["size"] >= 0 else "-", ",".join(r["platforms"]) or "-"])
    return 0


async def rmi(client: Client, args: argparse.Namespace) -> int:
    status = 0
    for name in args.names:
        try:
            await client.images.delete(name, sync=args.sync)
            print(name)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            print(f"flotilla: {name}: {getattr(exc, 'message', exc)}")
            status = 1
    return status


def register(sub: Any) -> None:
    p = command(sub, "pull", pull, "fetch an image from a registry and unpack it")
    p.add_argument("ref")
    p.add_argument("--platform", help="os/arch[/variant] (default: this host's)")
    p.add_argument("--all-platforms", action="store_true")
    p.add_argument("--no-unpack", action="store_true")
    p.add_argument("--snapshotter", default="overlayfs")
    p.add_argument("--max-concurrent-downloads", type=int, default=3)
    p.add_argument("--client-side", action="store_true",
                   help="fetch and unpack here, as ctr does (default: the server pulls if it can)")
    _registry_options(p)

    p = command(sub, "push", push, "push a local image to a registry")
    p.add_argument("local")
    p.add_argument("remote", nargs="?", help="destination reference (default: the local name)")
    p.add_argument("--client-side", action="store_true",
                   help="read the blobs here and upload them (default: the server pushes if it can)")
    _registry_options(p)

    p = command(sub, "images", images, "list images")
    p.add_argument("filters", nargs="*", help="containerd filters, e.g. name~=busybox")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    json_option(p)

    p = command(sub, "rmi", rmi, "remove images")
    p.add_argument("names", nargs="+")
    p.add_argument("--sync", action="store_true", help="wait for garbage collection")
