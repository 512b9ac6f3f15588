"""NATS binding of the transfer service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import struct_pb2

from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.metadata import MetadataClient
from flotilla.libs.api.snapshots import SnapshotsClient
from flotilla.libs.api.transfer import (
    PULL, PUSH, PullProgress, PullRequest, PullResult, PushRequest, PushResult, stem,
)
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.events import Event
from flotilla.libs.errors import InvalidArgument
from flotilla.libs.routes import Route
from flotilla.libs.subjects import events as events_subject, valid_subject
from flotilla.libs.wire import to_wire

from .puller import Puller
from .pusher import Pusher

log = logging.getLogger("flotilla.transfer")
PROGRESS_INTERVAL = 0.1  # seconds between "downloading" records of one blob
PROGRESS_TOPIC = "/transfer/progress"
STRUCT_TYPE_URL = "google.protobuf.Struct"


class TransferServer:
    def __init__(self, bus: Bus, cfg: Config) -> None:
        self.bus, self.cfg = bus, cfg
        self.content = ContentClient(bus, cfg.prefix, timeout=cfg.request_timeout, host=cfg.host)
        self.metadata = MetadataClient(bus, cfg.prefix)
        self.snapshots = SnapshotsClient(bus, cfg.prefix, cfg.host)

    async def start(self) -> None:
        routes: list[tuple[Route[Any, Any], Callable[[Any], Awaitable[Any]]]] = [
            (PULL, self.pull), (PUSH, self.push)]
        await self.bus.serve_routes(stem(self.cfg.prefix, self.cfg.host), routes)

    async def stop(self) -> None:
        return None

    async def _event(self, namespace: str, ref: str, p: PullProgress) -> None:
        """``/transfer/progress`` with a google.protobuf.Struct payload (ctr events prints it)."""
        payload = struct_pb2.Struct()
        payload.update({"ref": ref, **{k: v for k, v in to_wire(p).items()}})
        try:
            await self.bus.publish(events_subject(self.cfg.prefix), Event(
                topic=PROGRESS_TOPIC, namespace=namespace, type_url=STRUCT_TYPE_URL,
                timestamp_ns=time.time_ns(), value=payload.SerializeToString(), host=self.cfg.host))
        except Exception:  # progress is best effort; the pull goes on
            log.warning("progress event lost", exc_info=True)

    def _reporter(self, namespace: str, ref: str, progress: str):  # type: ignore[no-untyped-def]
        if progress and (not progress.startswith("_INBOX.") or not valid_subject(progress)):
            # progress goes to the caller's own inbox, never to another service's subject
            raise InvalidArgument(f"progress subject {progress!r}: not an inbox: invalid argument")
        loop = asyncio.get_running_loop()
        last: dict[str, float] = {}

        def report(p: PullProgress) -> None:
            if p.status not in ("downloading", "uploading", "waiting"):
                # a blob's (or the image's) milestone: an event everyone can watch
                loop.create_task(self._event(namespace, ref, p))
            if not progress:
                return
            now = loop.time()
            if p.status in ("downloading", "uploading") and now - last.get(p.key, 0.0) < PROGRESS_INTERVAL:
                return
            last[p.key] = now
            loop.create_task(self.bus.publish(progress, to_wire(p)))
        return report

    async def pull(self, req: PullRequest) -> PullResult:
        report = self._reporter(req.namespace, req.ref, req.progress)
        result = await Puller(self.content, self.metadata, self.snapshots, req, report).run()
        log.info("pulled %s into %s (%d bytes fetched)", result.name, req.namespace, result.fetched)
        return result

    async def push(self, req: PushRequest) -> PushResult:
        report = self._reporter(req.namespace, req.ref or req.name, req.progress)
        result = await Pusher(self.content, self.metadata, req, report).run()
        log.info("pushed %s from %s as %s (%d bytes sent)", req.name, req.namespace, result.ref, result.sent)
        return result
