"""Start a long-running task, stop it with SIGTERM, read its exit status."""

from __future__ import annotations

import asyncio
import sys
import uuid

from _common import arguments

from flotilla.client import Client, start_task, with_process_args

# PID 1 in a container ignores signals it has no handler for, so the shell traps SIGTERM
SCRIPT = "trap 'echo got SIGTERM; exit 143' TERM; echo ready; while true; do sleep 0.1; done"


async def main() -> int:
    args = arguments(__doc__ or "")
    async with Client(args.address, args.namespace) as client:
        image = await client.pull(args.image)
        cid = "example-" + uuid.uuid4().hex[:8]
        await client.new_container(cid, image.name, with_process_args("sh", "-c", SCRIPT))
        output = bytearray()
        try:
            task = await start_task(client, cid, stdout=output.extend)
            while b"ready" not in output:
                await asyncio.sleep(0.05)
            print(f"task {cid} is {(await client.tasks.get(cid)).status}; sending SIGTERM")
            await task.kill("SIGTERM")
            exit = await task.wait()
            await task.delete()
        finally:
            await client.delete_container(cid)
        print(output.decode(), end="")
        print(f"task {cid} exited with status {exit.status}")
        return 0 if exit.status == 143 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
