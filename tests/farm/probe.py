"""``python -m tests.farm.probe pub|sub URL SEED SUBJECT SECONDS TAG``, run inside a host's
namespace: publish ``<TAG>-secret-<n>`` to SUBJECT every 50 ms, or print each message's
data received on it, for at most SECONDS."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import nats


async def main(mode: str, url: str, seed: str, subject: str, seconds: float, tag: str) -> None:
    deadline = time.monotonic() + seconds
    for _ in range(50):  # the host's nats-server may still be starting
        try:
            nc = await nats.connect(url, nkeys_seed=seed, inbox_prefix=f"_INBOX.{Path(seed).stem}",
                                    connect_timeout=1, allow_reconnect=False)
            break
        except Exception:
            await asyncio.sleep(0.1)
    else:
        raise SystemExit(f"no nats-server at {url}")
    if mode == "sub":
        async def show(msg: nats.aio.msg.Msg) -> None:
            print(msg.data.decode(), flush=True)
        await nc.subscribe(subject, cb=show)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.sleep(seconds)
    else:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await nc.publish(subject, f"{tag}-secret-{n}".encode())
            await asyncio.sleep(0.05)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]))
