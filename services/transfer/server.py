"""NATS binding of the transfer service."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.metadata import MetadataClient
from flotilla.libs.api.snapshots import SnapshotsClient
from flotilla.libs.api.transfer import PULL, PullProgress, PullRequest, subject
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.wire import from_wire, to_wire

from .puller import Puller

log = logging.getLogger("flotilla.transfer")
PROGRESS_INTERVAL = 0.1  # seconds between "downloading" records of one blob


class TransferServer:
    def __init__(self, bus: Bus, cfg: Config) -> None:
        self.bus, self.cfg = bus, cfg
        self.content = ContentClient(bus, cfg.prefix, timeout=cfg.request_timeout)
        self.metadata = MetadataClient(bus, cfg.prefix)
        self.snapshots = SnapshotsClient(bus, cfg.prefix, cfg.host)

    async def start(self) -> None:
        await self.bus.serve(subject(self.cfg.prefix, self.cfg.host, PULL), self.pull, method=PULL)

    async def stop(self) -> None:
        return None

    async def pull(self, data: Any) -> Any:
        req = from_wire(PullRequest, data)
        loop = asyncio.get_running_loop()
        last: dict[str, float] = {}

        def report(p: PullProgress) -> None:
            if not req.progress:
                return
            now = loop.time()
            if p.status == "downloading" and now - last.get(p.key, 0.0) < PROGRESS_INTERVAL:
                return
            last[p.key] = now
            loop.create_task(self.bus.publish(req.progress, to_wire(p)))

        result = await Puller(self.content, self.metadata, self.snapshots, req, report).run()
        log.info("pulled %s into %s (%d bytes fetched)", result.name, req.namespace, result.fetched)
        return to_wire(result)
