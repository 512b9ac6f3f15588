"""run, ps, exec, kill, rm."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

from flotilla.client import (Client, FifoSet, FlotillaError, NotFound, exec_process, parse_mount, start_task,
                             with_env, with_host_hosts_file, with_host_namespace, with_host_resolvconf,
                             with_mounts, with_tty, with_tty_size)

from ._base import command, json_option, output
from .terminal import forward_signals, raw_terminal, stdin_reader, terminal_size


async def run(client: Client, args: argparse.Namespace) -> int:
    try:
        await client.images.get(args.image)
    except NotFound:
        print(f"flotilla: image {args.image!r} not found in namespace {client.namespace!r}: "
              f"pull it first (flotilla pull {args.image})", file=sys.stderr)
        return 1
    opts = [with_env(*args.env), with_mounts(*[parse_mount(m) for m in args.mount])]
    if args.tty:
        width, height = terminal_size()
        opts += [with_tty, with_tty_size(width, height)]
    if args.net_host:
        opts += [with_host_namespace("network"), with_host_hosts_file, with_host_resolvconf]
    await client.new_container(args.id, args.image, *opts, args=args.args, snapshotter=args.snapshotter)
    try:
        if args.detach:
            task = await start_task(client, args.id, with_io=False)
            print(args.id)
            return 0
        stdin = await stdin_reader() if (args.tty or args.interactive) else None
        with raw_terminal(args.tty):
            task = await start_task(client, args.id, stdin=stdin, terminal=args.tty)
            with forward_signals(lambda s: task.kill(s)):
                status = (await task.wait()).status
        await task.delete()
        return status
    finally:
        if args.rm and not args.detach:
            await client.delete_container(args.id)


async def ps(client: Client, args: argparse.Namespace) -> int:
    tasks = {t.id: t for t in await client.tasks.list()}
    rows = []
    for c in await client.containers.list(*args.filters):
        t = tasks.get(c.id)
        rows.append({"id": c.id, "image": c.image, "runtime": c.runtime, "status": t.status if t else "-",
                     "pid": t.pid if t else 0, "exit_status": t.exit_status if t else None, "labels": c.labels})
    output(args, rows, ["CONTAINER", "IMAGE", "RUNTIME", "STATUS", "PID"],
           lambda r: [r["id"], r["image"] or "-", r["runtime"], r["status"], r["pid"] or "-"])
    return 0


async def exec_(client: Client, args: argparse.Namespace) -> int:
    container = await client.containers.get(args.id)
    exec_id = args.exec_id or "exec-" + uuid.uuid4().hex[:8]
    process = exec_process(container.spec, args.args, tty=args.tty, env=args.env, cwd=args.cwd or "")
    interactive = args.tty or args.interactive
    io = FifoSet.create(exec_id, stdin=interactive, terminal=args.tty)
    stdin = await stdin_reader() if interactive else None
    try:
        io.start_copy(input=stdin)
        await client.tasks.exec(args.id, exec_id, process, stdin=io.stdin, stdout=io.stdout, stderr=io.stderr,
                                terminal=args.tty)
        waiter = asyncio.ensure_future(client.tasks.wait(args.id, exec_id))
        await asyncio.sleep(0)
        with raw_terminal(args.tty):
            await client.tasks.start(args.id, exec_id)
            io.started()
            with forward_signals(lambda s: client.tasks.kill(args.id, s, exec_id=exec_id)):
                status = (await waiter).status
                await io.wait()
        await client.tasks.delete_process(args.id, exec_id)
        return status
    finally:
        io.close()


async def kill(client: Client, args: argparse.Namespace) -> int:
    await client.tasks.kill(args.id, args.signal, exec_id=args.exec_id, all=args.all)
    return 0


async def rm(client: Client, args: argparse.Namespace) -> int:
    status = 0
    for cid in args.ids:
        try:
            try:
                task = await client.tasks.get(cid)
            except NotFound:
                task = None
            if task is not None:
                if task.status != "stopped":
                    if not args.force:
                        raise FlotillaError(f"container {cid} has a {task.status} task: stop it or use --force")
                    await client.tasks.kill(cid, "SIGKILL", all=True)
                    await client.tasks.wait(cid)
                await client.tasks.delete(cid)
            await client.delete_container(cid)
            print(cid)
        except FlotillaError as exc:
            print(f"flotilla: {cid}: {exc.message}", file=sys.stderr)
            status = 1
    return status


def register(sub: Any) -> None:
    p = command(sub, "run", run, "create a container from an image and run its task")
    p.add_argument("-d", "--detach", action="store_true", help="start it and return")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("--rm", action="store_true", help="remove the container when the task exits")
    p.add_argument("--env", "-e", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--mount", action="append", default=[],
                   help="type=bind,src=/host,dst=/ctr,options=rbind:ro (repeatable)")
    p.add_argument("--net-host", action="store_true", help="share the host's network namespace")
    p.add_argument("--snapshotter", default="overlayfs")
    p.add_argument("image")
    p.add_argument("id")
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = command(sub, "ps", ps, "list containers and their tasks")
    p.add_argument("filters", nargs="*")
    json_option(p)

    p = command(sub, "exec", exec_, "run another process in a running container")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("--env", "-e", action="append", default=[])
    p.add_argument("--cwd")
    p.add_argument("--exec-id")
    p.add_argument("id")
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = command(sub, "kill", kill, "signal a container's task")
    p.add_argument("-s", "--signal", default="SIGTERM")
    p.add_argument("--all", action="store_true", help="every process of the task")
    p.add_argument("--exec-id", default="")
    p.add_argument("id")

    p = command(sub, "rm", rm, "remove containers (and their stopped tasks)")
    p.add_argument("-f", "--force", action="store_true", help="kill a running task first")
    p.add_argument("ids", nargs="+")
