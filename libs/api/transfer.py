"""The transfer service's contract: server-side pull from a registry into the suite.

Subjects (host-local, since a pull unpacks into this host's snapshots):
``<prefix>.transfer.<host>.pull``: PullRequest -> PullResult. While it runs, the service
publishes PullProgress records to the request's ``progress`` subject (if any); the last is
``status="done"`` for the image. Blobs already in the content store are never fetched again;
an interrupted blob resumes from its ingest's offset.
``<prefix>.transfer.<host>.push``: PushRequest -> PushResult: the image ``name`` of the
namespace to the registry as ``ref`` (blobs the registry has are not sent again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from flotilla.libs import subjects
from flotilla.libs.routes import Route, method_name
from flotilla.libs.wire import from_wire

if TYPE_CHECKING:  # the bus (nats) is not imported for a contract's records and subjects
    from flotilla.libs.bus import Bus

SERVICE = "transfer"
PULL_TIMEOUT = 3600.0
R = TypeVar("R")


def stem(prefix: str, host: str) -> str:
    """Where one host's transfer service serves its routes: ``<prefix>.transfer.<host>``."""
    return subjects.stem(prefix, SERVICE, host)


def subject(prefix: str, host: str, method: Route[Any, Any] | str) -> str:
    return f"{stem(prefix, host)}.{method_name(method)}"


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
class PushRequest:
    namespace: str
    name: str                       # the local image
    ref: str                        # where it goes ("" = its own name)
    username: str = ""
    password: str = ""
    plain_http: bool | None = None
    concurrency: int = 4
    progress: str = ""


@dataclass
class PushResult:
    ref: str
    digest: str
    media_type: str
    size: int
    sent: int = 0                   # bytes uploaded by this push


# not idempotent: a pull or push sent again carries its request id and runs once
PULL: Route[PullRequest, PullResult] = Route("pull", PullRequest, PullResult, timeout=PULL_TIMEOUT)
PUSH: Route[PushRequest, PushResult] = Route("push", PushRequest, PushResult, timeout=PULL_TIMEOUT)
ROUTES: tuple[Route[Any, Any], ...] = (PULL, PUSH)


@dataclass
class TransferClient:
    bus: Bus
    prefix: str
    host: str

    async def pull(self, req: PullRequest, progress: Callable[[PullProgress], Awaitable[None] | None] | None = None,
                   timeout: float = PULL_TIMEOUT) -> PullResult:
        return await self._call(PULL, req, progress, timeout)

    async def push(self, req: PushRequest, progress: Callable[[PullProgress], Awaitable[None] | None] | None = None,
                   timeout: float = PULL_TIMEOUT) -> PushResult:
        return await self._call(PUSH, req, progress, timeout)

    async def _call(self, route: Route[Any, R], req: PullRequest | PushRequest,
                    progress: Callable[[PullProgress], Awaitable[None] | None] | None, timeout: float) -> R:
        sub = None
        if progress is not None:
            # an inbox of this connection's: the only subjects its credential may read
            req.progress = req.progress or self.bus.nc.new_inbox()

            async def on_progress(data: object) -> None:
                result = progress(from_wire(PullProgress, data))  # type: ignore[arg-type]
                if result is not None:
                    await result

            sub = await self.bus.subscribe(req.progress, on_progress)
        try:
            return await self.bus.call(subject(self.prefix, self.host, route), route, req, timeout=timeout)
        finally:
            if sub is not None:
                await sub.unsubscribe()
