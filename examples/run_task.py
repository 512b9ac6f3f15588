"""Create and start a task, wait for it, print its output and exit status."""

from __future__ import annotations

import asyncio
import sys
import uuid

from _common import arguments

from flotilla.client import Client, start_task, with_process_args


async def main() -> int:
    args = arguments(__doc__ or "")
    async with Client(args.address, args.namespace) as client:
        image = await client.pull(args.image)
        cid = "example-" + uuid.uuid4().hex[:8]
        await client.new_container(cid, image.name, with_process_args("sh", "-c", "echo hello from $(hostname); exit 3"))
        try:
            task = await start_task(client, cid)        # output goes to our stdout
            print(f"task {cid} started, pid {task.pid}")
            exit = await task.wait()
            await task.delete()
            print(f"task {cid} exited with status {exit.status}")
        finally:
            await client.delete_container(cid)
        return 0 if exit.status == 3 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
