"""The transfer service's contract: server-side pull from a registry into the suite.

Subjects (host-local, since a pull unpacks into this host's snapshots):
``<prefix>.transfer.<host>.pull``: PullRequest -> PullResult. While it runs, the service
publishes PullProgress records to the request's ``progress`` subject (if any); the last is
``status="done"`` for the image. Blobs already in the content store are never fetched again;
an interrupted blob resumes from its ingest's offset.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from flotilla.libs.bus import Bus
from flotilla.libs.subjects import local
from flotilla.libs.wire import from_wire

SERVICE = "transfer"
PULL = "pull"
PULL_TIMEOUT = 3600.0


def subject(prefix: str, host: str, method: str) -> str:
    return local(prefix, SERVICE, host, method)


@dataclass
class PullRequest:
    namespace: str
    ref: str
    platform: str = ""              # os/arch[/variant]; "" = the service host's
    all_platforms: bool = False
    unpack: bool = True
    snapshotter: str = "overlayfs"
    username: str = ""
    password: str = ""
    plain_http: bool | None = None  # None: plain HTTP for loopback registries
    concurrency: int = 4
    progress: str = ""              # subject for PullProgress records ("" = none)


@dataclass
class PullProgress:
    key: str                        # "layer-sha256:…", "manifest-sha256:…", or the image name
    digest: str
    media_type: str
    offset: int
    total: int
    status: str                     # waiting|downloading|exists|done|unpacking|unpacked|failed


@dataclass
class PullResult:
    name: str
    digest: str
    media_type: str
    size: int
    fetched: int = 0                # bytes fetched from the registry by this pull
    chain_id: str = ""


@dataclass
class TransferClient:
    bus: Bus
    prefix: str
    host: str
    events: list[PullProgress] = field(default_factory=list)

    async def pull(self, req: PullRequest, progress: Callable[[PullProgress], Awaitable[None] | None] | None = None,
                   timeout: float = PULL_TIMEOUT) -> PullResult:
        sub = None
        if progress is not None:
            req.progress = req.progress or f"_INBOX.transfer.{uuid.uuid4().hex}"

            async def on_progress(data: object) -> None:
                result = progress(from_wire(PullProgress, data))  # type: ignore[arg-type]
                if result is not None:
                    await result

            sub = await self.bus.subscribe(req.progress, on_progress)
        try:
            data = await self.bus.request(subject(self.prefix, self.host, PULL), req, timeout=timeout)
            return from_wire(PullResult, data)  # type: ignore[arg-type]
        finally:
            if sub is not None:
                await sub.unsubscribe()
