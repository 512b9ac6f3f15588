"""Pull an image (client-side: fetched into the content store under a lease, then unpacked)."""

from __future__ import annotations

import asyncio

from _common import arguments

from flotilla.client import Client, Progress


async def main() -> None:
    args = arguments(__doc__ or "")
    async with Client(args.address, args.namespace) as client:
        def progress(p: Progress) -> None:
            if p.status in ("done", "exists"):
                print(f"{p.key}: {p.status} ({p.total} bytes)")

        image = await client.pull(args.image, progress=progress)
        resolved = await client.resolve_image(image.name)
        print(f"pulled {image.name} {image.target.digest}")
        print(f"unpacked as snapshot {resolved.chain_id} ({len(resolved.diff_ids)} layers)")


if __name__ == "__main__":
    asyncio.run(main())
