"""Create a container whose spec comes from the image's configuration, show it, remove it."""

from __future__ import annotations

import asyncio
import uuid

from _common import arguments

from flotilla.client import Client, with_env, with_hostname


async def main() -> None:
    args = arguments(__doc__ or "")
    async with Client(args.address, args.namespace) as client:
        image = await client.pull(args.image)
        cid = "example-" + uuid.uuid4().hex[:8]
        container = await client.new_container(cid, image.name, with_env("GREETING=hello"),
                                               with_hostname("example"))
        try:
            process = container.spec["process"]
            print(f"container {container.id} from {container.image}")
            print(f"args: {process['args']}")
            print(f"env: {process['env']}")
            print(f"cwd: {process['cwd']}, hostname: {container.spec.get('hostname')}")
            print(f"snapshot: {container.snapshotter}/{container.snapshot_key}")
        finally:
            await client.delete_container(cid)
        print(f"removed {cid}")


if __name__ == "__main__":
    asyncio.run(main())
