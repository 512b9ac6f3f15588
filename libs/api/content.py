"""The content service's contract: subjects, records, and its client over the bus.

Blobs are addressed by digest (``sha256:<hex>``) and owned per namespace: one file on
disk, one ownership record (labels, leases, timestamps) per namespace that has it.

Bulk bytes take one of two paths with the same guarantees:

* between hosts, chunks of at most 1 MiB over NATS, several in flight;
* on one host (the caller can open the very file the service names: same device and
  inode), the caller reads the committed blob file or writes the ingest's data file
  itself and NATS carries only control (``w.sync`` tells the service how far the file
  is written; the service hashes it and verifies the digest before any commit).

Writes are sessions: ``writer.open`` (shared subject, any instance) locks the ref and
answers with the instance that holds the lock; the session's further calls go to that
instance's own subjects ``<prefix>.content.i.<instance>.<method>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..digests import ALGORITHMS, digest_error  # noqa: F401  (part of the contract)
from ..errors import AlreadyExists, FlotillaError, NotFound
from .. import subjects
from ..routes import Route, method_name
from ..subjects import shared
from ..wire import MAX_CHUNK, from_wire

# the records live apart to keep this file short; they are part of this contract
from ._content_records import (
    ChunkWrite, CommitRequest, ContentChanged, DeleteRequest, DigestRequest, Info, LeaseRequest, ListRequest, LocalFile,
    NamespaceRequest, ReadRequest, RefRequest, SessionRequest, Status, SyncRequest, UpdateRequest, WriterOpen,
    WriterSession,
)

if TYPE_CHECKING:  # the bus (nats) is not imported for a contract's records and subjects
    from ..bus import Bus

log = logging.getLogger(__name__)

SERVICE = "content"
CHUNK = MAX_CHUNK          # bytes per bus message
WINDOW = 6                 # bus chunks in flight per transfer
LOCAL_CHUNK = 8 << 20      # bytes per local pwrite/read: big buffers keep hashing off the GIL
LOCAL_BACKLOG = 32 << 20   # bytes queued for the disk before write() waits
LAST_SYNC = 256 << 10      # unhashed bytes at a blob's end worth a sync before its commit
# the content namespaces of containerds using this store as their proxy plugin, one each
# (docs/integrators.md): no metadata record may live in one, or Flotilla's own collector
# would sweep that containerd's blobs
CONSUMER_NAMESPACE_PREFIX = "proxy."
HEARTBEAT = 5.0            # seconds between a writer's keep-alives (the service waits IDLE)

R = TypeVar("R")

# -- methods on the shared subject <prefix>.content.<method> (queue group): request record ->
# reply record (None: plain data). Reads and label updates are idempotent (sent again as they
# are); the others carry a request id. The client's own timeout (default 10 s) applies.
INFO: Route[DigestRequest, Info] = Route("info", DigestRequest, Info, idempotent=True)
LIST: Route[ListRequest, list[Info]] = Route("list", ListRequest, list[Info], idempotent=True)
UPDATE: Route[UpdateRequest, Info] = Route("update", UpdateRequest, Info, idempotent=True)
# publishes /content/delete
DELETE: Route[DeleteRequest, None] = Route("delete", DeleteRequest, None)
READ: Route[ReadRequest, bytes] = Route("read", ReadRequest, None, idempotent=True)  # at most CHUNK bytes
# NotFound if not owned
LOCAL_PATH: Route[DigestRequest, LocalFile] = Route("local_path", DigestRequest, LocalFile, idempotent=True)
STATUS: Route[RefRequest, Status] = Route("status", RefRequest, Status, idempotent=True)
LIST_STATUSES: Route[ListRequest, list[Status]] = Route("statuses", ListRequest, list[Status], idempotent=True)
ABORT: Route[RefRequest, None] = Route("abort", RefRequest, None)
NAMESPACE_HELD: Route[NamespaceRequest, bool] = Route("namespace_held", NamespaceRequest, None, idempotent=True)
# -> how many records it no longer holds
RELEASE_LEASE: Route[LeaseRequest, int] = Route("release_lease", LeaseRequest, None)
# -> the namespaces owning a blob or an ingest
NAMESPACES: Route[None, list[str]] = Route("namespaces", None, None, idempotent=True)
WRITER_OPEN: Route[WriterOpen, WriterSession] = Route("writer.open", WriterOpen, WriterSession)

# published (not served) on <prefix>.content.changed: a ContentChanged for a record changed
# in place (labels), for callers that keep records; deletes are /content/delete events
CHANGED = "changed"

# -- methods on the session's instance subject <prefix>.content.i.<instance>.<method>
# (no queue group: that instance alone holds the session). None is idempotent: each carries
# a request id, so a call sent again is done once.
W_STATUS: Route[SessionRequest, WriterSession] = Route("w.status", SessionRequest, WriterSession)  # digest so far
W_WRITE: Route[ChunkWrite, int] = Route("w.write", ChunkWrite, None)  # -> the offset after the chunk
# local path: the data file holds the ingest's bytes up to the request's offset -> that offset
W_SYNC: Route[SyncRequest, int] = Route("w.sync", SyncRequest, None)
W_TRUNCATE: Route[SessionRequest, int] = Route("w.truncate", SessionRequest, None)  # restart at offset 0
W_COMMIT: Route[CommitRequest, Info] = Route("w.commit", CommitRequest, Info, timeout=600.0)  # hashes the rest
# releases the ref (the ingest stays); briefly: the service's idle timeout ends the session anyway
W_CLOSE: Route[SessionRequest, None] = Route("w.close", SessionRequest, None, timeout=5.0)


def stem(prefix: str) -> str:
    """Where the shared methods are served: ``<prefix>.content``."""
    return subjects.stem(prefix, SERVICE)


def instance_stem(prefix: str, instance: str) -> str:
    """Where one instance serves the write sessions it holds: ``<prefix>.content.i.<instance>``."""
    return f"{stem(prefix)}.i.{instance}"


def subject(prefix: str, method: Route[Any, Any] | str) -> str:
    return shared(prefix, SERVICE, method_name(method))


def instance_subject(prefix: str, instance: str, method: Route[Any, Any] | str) -> str:
    return f"{instance_stem(prefix, instance)}.{method_name(method)}"


def session_gone(session: str) -> NotFound:
    """The error of a call to a session its instance no longer holds: its writer opens the
    ingest again."""
    return NotFound(f"write session {session}: not found")


def is_session_gone(exc: FlotillaError) -> bool:
    return isinstance(exc, NotFound) and exc.message.startswith("write session ")


async def windowed(fetch: Callable[[int, int], Awaitable[bytes]], start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes from ``start`` to ``end`` as ``fetch(offset, size)`` gives them, at most CHUNK
    a call and WINDOW calls in flight, yielded in order."""
    queue: deque[asyncio.Future[bytes]] = deque()
    pos = start

    def launch() -> None:
        nonlocal pos
        if pos < end:
            n = min(CHUNK, end - pos)
            queue.append(asyncio.ensure_future(fetch(pos, n)))
            pos += n

    try:
        for _ in range(WINDOW):
            launch()
        while queue:
            piece = await queue.popleft()
            launch()
            yield piece
    finally:
        for fut in queue:
            fut.cancel()


# -- client ----------------------------------------------------------------------------


def same_file(f: LocalFile | None, host: str = "") -> bool:
    """True when ``f`` is the very file the service means (same host and filesystem)."""
    if f is None or not f.path or (f.host and host and f.host != host):
        return False
    try:
        st = os.stat(f.path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (f.dev, f.ino)


class ContentClient:
    """Calls the content service. Reads and label updates are idempotent and retried."""

    def __init__(self, bus: Bus, prefix: str, *, timeout: float = 10.0, local: bool = True,
                 host: str = "") -> None:
        self.bus, self.prefix, self.timeout = bus, prefix, timeout
        self.local = local  # False forces bytes over NATS even on the service's host
        self.host = host    # this process' host id: files of another host's service are not read

    async def _call(self, route: Route[Any, R], request: Any, timeout: float | None = None) -> R:
        return await self.bus.call(shared(self.prefix, SERVICE, route.method), route, request,
                                   timeout=timeout or self.timeout)

    async def info(self, namespace: str, digest: str) -> Info:
        return await self._call(INFO, DigestRequest(namespace, digest))

    async def exists(self, namespace: str, digest: str) -> bool:
        try:
            await self.info(namespace, digest)
            return True
        except NotFound:
            return False

    async def list(self, namespace: str, filters: list[str] | None = None) -> list[Info]:
        return await self._call(LIST, ListRequest(namespace, list(filters or [])))

    async def update(self, namespace: str, info: Info, paths: list[str] | None = None) -> Info:
        return await self._call(UPDATE, UpdateRequest(namespace, info, list(paths or [])))

    async def delete(self, namespace: str, digest: str, *, leases_seen: list[str] | None = None) -> None:
        """``leases_seen``: a collection's delete, done only if the record has no other lease now."""
        await self._call(DELETE, DeleteRequest(namespace, digest, leases_seen))

    async def namespace_held(self, namespace: str) -> bool:
        return bool(await self._call(NAMESPACE_HELD, NamespaceRequest(namespace)))

    async def namespaces(self) -> list[str]:
        """Every namespace that owns a blob or has an ingest (containerd lists those too)."""
        return list(await self._call(NAMESPACES, None))

    async def release_lease(self, namespace: str, lease: str) -> int:
        """Forget ``lease`` on every blob of ``namespace`` (the lease was deleted)."""
        return int(await self._call(RELEASE_LEASE, LeaseRequest(namespace, lease)))

    async def watch_changes(self, callback: Callable[[ContentChanged], None]) -> None:
        """``callback`` for every record changed in place from now on (see CHANGED)."""
        async def on_notice(data: Any) -> None:
            callback(from_wire(ContentChanged, data))
        await self.bus.subscribe(subject(self.prefix, CHANGED), on_notice)

    async def local_file(self, namespace: str, digest: str) -> LocalFile | None:
        """The committed blob's file when this process shares its filesystem, else None."""
        f = await self._call(LOCAL_PATH, DigestRequest(namespace, digest))
        return f if same_file(f, self.host) else None

    async def local_path(self, namespace: str, digest: str) -> str | None:
        f = await self.local_file(namespace, digest)
        return f.path if f else None

    async def read(self, namespace: str, digest: str, offset: int = 0, size: int = -1) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` (``size`` < 0: to the end), in pieces."""
        f = await self.local_file(namespace, digest) if self.local else None
        if f is not None:
            end = f.size if size < 0 else min(f.size, offset + size)
            fd = await asyncio.to_thread(os.open, f.path, os.O_RDONLY)
            try:
                pos = offset
                while pos < end:
                    piece = await asyncio.to_thread(os.pread, fd, min(LOCAL_CHUNK, end - pos), pos)
                    if not piece:
                        break
                    pos += len(piece)
                    yield piece
            finally:
                os.close(fd)
            return
        info = await self.info(namespace, digest)
        end = info.size if size < 0 else min(info.size, offset + size)
        async for piece in windowed(lambda at, n: self._call(READ, ReadRequest(namespace, digest, at, n)),
                                    offset, end):
            yield piece

    async def read_all(self, namespace: str, digest: str) -> bytes:
        return b"".join([piece async for piece in self.read(namespace, digest)])

    async def status(self, namespace: str, ref: str) -> Status:
        return await self._call(STATUS, RefRequest(namespace, ref))

    async def list_statuses(self, namespace: str, filters: list[str] | None = None) -> list[Status]:
        return await self._call(LIST_STATUSES, ListRequest(namespace, list(filters or [])))

    async def abort(self, namespace: str, ref: str) -> None:
        await self._call(ABORT, RefRequest(namespace, ref))

    async def writer(self, namespace: str, ref: str, total: int = 0, expected: str = "",
                     lease: str = "") -> Writer:
        """Open (or resume) the ingest ``ref``; raises Unavailable if another writer holds it
        and AlreadyExists if ``expected`` is already in ``namespace``."""
        opened = WriterOpen(namespace, ref, total, expected, lease, self.local)
        return Writer(self, await self._open(opened), self.local, opened)

    async def _open(self, opened: WriterOpen) -> WriterSession:
        # safe to send again: a second open of the same ref by the same caller is refused
        # while the first holds it, and a resend reaches the service only when the first did not
        return await self._call(WRITER_OPEN, opened)

    async def write_blob(self, namespace: str, ref: str, data: AsyncIterable[bytes] | bytes,
                         expected: str = "", total: int = 0, labels: dict[str, str] | None = None,
                         lease: str = "") -> str:
        """Store ``data`` as one blob and return its digest (``expected`` if it is already there).

        Resumes a bytes payload from the ingest's offset; a stream is written from the start.
        """
        try:
            w = await self.writer(namespace, ref, total, expected, lease)
        except AlreadyExists:
            return expected
        async with w:
            if not w.session.shared:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    view = memoryview(data)
                    if w.offset > len(view):
                        await w.truncate()
                    for start in range(w.offset, len(view), LOCAL_CHUNK):
                        await w.write(view[start:start + LOCAL_CHUNK])
                else:
                    if w.offset:
                        await w.truncate()
                    async for piece in data:
                        await w.write(piece)
            try:
                info = await w.commit(total, expected, labels)
            except AlreadyExists as exc:
                # another ref committed the same bytes first; the session is over, the
                # message names the digest ("content <digest>: already exists")
                m = re.match(r"content (\S+): already exists", exc.message)
                return expected or (m.group(1) if m else "")
            return info.digest


# the writer lives apart to keep this file short; it is part of this contract (and uses
# the names above, so it is imported last)
from ._content_writer import Writer  # noqa: E402
