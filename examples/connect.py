"""Connect to the server and say what it is."""

from __future__ import annotations

import asyncio

from _common import arguments

from flotilla.client import Client


async def main() -> None:
    args = arguments(__doc__ or "", image=False)
    async with Client(args.address, args.namespace) as client:
        version = await client.version.get()
        namespaces = [n.name for n in await client.namespaces.list()]
        print(f"connected to {args.address}: version {version.version} ({version.revision})")
        print(f"namespaces: {', '.join(namespaces) or '(none)'}")


if __name__ == "__main__":
    asyncio.run(main())
