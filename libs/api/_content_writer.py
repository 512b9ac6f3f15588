"""The content contract's writer: one write session, bytes to the ingest's data file on the
service's host, as chunks over the bus elsewhere (libs/api/content.py re-exports it)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..directio import Appender
from ..errors import AlreadyExists, DataLoss, FlotillaError, InstanceGone, NotFound, Unavailable
from ..routes import Route
from ._content_records import ChunkWrite, CommitRequest, Info, SessionRequest, SyncRequest, WriterOpen, WriterSession
from .content import (
    CHUNK, HEARTBEAT, LAST_SYNC, LOCAL_BACKLOG, LOCAL_CHUNK, W_CLOSE, W_COMMIT, W_STATUS, W_SYNC, W_TRUNCATE, W_WRITE,
    WINDOW, instance_stem, is_session_gone, same_file,
)

if TYPE_CHECKING:
    from .content import ContentClient

log = logging.getLogger("flotilla.libs.api.content")
R = TypeVar("R")


class Writer:
    """One write session; ``write`` appends, ``commit`` verifies and makes the blob visible.

    With ``local`` (the data file is reachable here) bytes go straight to the file and only
    offsets cross the bus; otherwise they go as chunks over NATS.
    """

    def __init__(self, client: "ContentClient", session: WriterSession, local: bool,
                 opened: WriterOpen | None = None) -> None:
        self.client, self.session = client, session
        self._opened = opened  # how the session was opened: the same opens it again
        self._reopening: asyncio.Lock | None = None
        self.offset = session.offset
        self.local = local and same_file(session.file, client.host)
        self._file: Appender | None = None  # used on the disk thread only
        self._pending: list[asyncio.Task[Any]] = []
        self._synced = self.offset
        # local path: appends queue on one thread (in order) so write() answers at once
        self._disk: ThreadPoolExecutor | None = None
        self._opening: asyncio.Future[Appender] | None = None
        if self.local:
            # the data file is opened (and its thread started) now, while the caller is
            # still fetching the bytes, not under the first write: 0.5 ms per blob here
            self._open_file()
        self._writes: list[tuple[asyncio.Future[int], int]] = []
        # remote path: offsets of chunks sent but not yet answered (a restarted service may
        # not have them), and where the service's data file stood when last opened again
        self._unanswered: set[int] = set()
        self._resumed_at = 0
        self._backlog = 0
        self._changed = False    # bytes written or truncated since ``session`` was current
        # when this writer last wrote, as containerd's writer keeps it: the data file's mtime
        # comes from the kernel's coarse clock (a tick early) and local bytes reach the file
        # behind our answer (late); containerd's content test suite checks the window
        self._wrote_ns = 0
        self._committed = False  # the service ended the session at commit
        self._closing: asyncio.Future[None] | None = None
        # the service closes sessions nobody touches (their caller died): say we live
        self._beat = asyncio.ensure_future(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:  # offset 0: hashes nothing, only touches the session
                await self._call(W_SYNC, SyncRequest(self.session.session, 0), timeout=5.0)
            except FlotillaError:
                pass

    def _subject(self, route: Route[Any, Any]) -> str:
        return f"{instance_stem(self.client.prefix, self.session.instance)}.{route.method}"

    async def _call(self, route: Route[Any, R], payload: Any, timeout: float | None = None) -> R:
        """A call to the session's instance. When that instance is gone (the content service
        restarted), the ingest is opened again where its data file stands, on whichever
        instance takes it, and the call goes there (issue 22)."""
        deadline = time.monotonic() + (timeout or self.client.timeout)
        while True:
            session = self.session
            try:
                data = await self.client.bus.request(
                    self._subject(route), dataclasses.replace(payload, session=session.session),
                    timeout=max(0.1, deadline - time.monotonic()), idempotent=route.idempotent,
                    instance_bound=True)
            except (InstanceGone, NotFound) as exc:
                # its instance is gone, or ended the session (idle, or this host unheard)
                if self._opened is None or self._committed or time.monotonic() >= deadline \
                        or not (isinstance(exc, InstanceGone) or is_session_gone(exc)):
                    raise
                await self._reopen(session)
                if isinstance(payload, ChunkWrite):
                    rest = self._rest_of(payload)
                    if rest is None:  # the file had it all before its instance died
                        return cast(R, payload.offset + len(payload.data))
                    payload = rest
                continue
            return route.decode_reply(data)

    def _rest_of(self, chunk: ChunkWrite) -> ChunkWrite | None:
        """What of ``chunk`` the data file lacks since it was opened again: none, the tail
        (the service died in the middle of writing it), or all of it."""
        skip = self._resumed_at - chunk.offset
        if skip <= 0:
            return chunk
        if skip >= len(chunk.data):
            return None
        return dataclasses.replace(chunk, offset=self._resumed_at, data=chunk.data[skip:])

    async def _reopen(self, lost: WriterSession) -> None:
        """Open the ingest again (once, however many calls found the instance gone)."""
        if self._reopening is None:
            self._reopening = asyncio.Lock()
        async with self._reopening:
            if self.session is not lost:
                return  # another call did it already
            assert self._opened is not None
            try:
                session = await self.client._open(self._opened)
            except Unavailable:
                # the ref is still locked: its instance lives and was only cut off from NATS
                # a moment (a nats-server restart), so the next call goes to it again
                await asyncio.sleep(0.1)
                return
            if not self.local:
                # every byte before the first unanswered chunk was written to the file; the
                # unanswered chunks are sent again (what the file lacks of them: _rest_of)
                first = min(self._unanswered, default=self.offset)
                if not first <= session.offset <= self.offset:
                    raise Unavailable(f"ingest {lost.ref}: the content service's data file holds "
                                      f"{session.offset} bytes, expected {first} to {self.offset}: unavailable")
                self._resumed_at = session.offset
            self.session = session
            if self.local and self._disk is not None:
                await self._take_file()
                # behind the appends queued so far, on the disk thread
                await asyncio.wrap_future(self._disk.submit(self._carry_over, session))

    def _carry_over(self, session: WriterSession) -> None:
        """On the disk thread, after a reopen: the bytes this writer put in the data file
        must be in the file the ingest has now. Where the new instance found another file
        (a new inode), what it lacks is copied from the one we still hold open; where it
        found ours shorter than we wrote, the bytes are lost and the write fails clearly
        rather than at the commit's size check."""
        old = self._file
        if old is None or session.file is None:
            return  # nothing written yet, or the blob is committed already (a shared session)
        st = os.fstat(old.fd)
        if (st.st_dev, st.st_ino) == (session.file.dev, session.file.ino):
            if st.st_size < old.written:
                raise DataLoss(f"ingest {session.ref}: its data file holds {st.st_size} bytes, "
                               f"{old.written} were written: data loss")
            return
        if session.offset > old.written:
            raise DataLoss(f"ingest {session.ref}: the content service's data file holds {session.offset} "
                           f"bytes, {old.written} were written here: data loss")
        log.warning("ingest %s: opened again on another data file (%d of %d bytes); copying the rest",
                    session.ref, session.offset, old.written)
        new = Appender(session.file.path, session.offset)
        try:
            while new.written < old.written:
                piece = os.pread(old.fd, min(LOCAL_CHUNK, old.written - new.written), new.written)
                if not piece:
                    raise DataLoss(f"ingest {session.ref}: the data file written here ends at "
                                   f"{new.written} of {old.written} bytes: data loss")
                new.append(piece)
            # the appends queued behind this one hold ``old``: its descriptor becomes the new file's
            os.dup2(new.fd, old.fd)
        finally:
            new.close()

    async def status(self) -> WriterSession:
        if not self._changed:  # nothing happened since the service last said: no round trip
            return self.session
        await self.flush()
        session = await self._call(W_STATUS, SessionRequest(self.session.session))
        # our own last write is when it came (the file may be written behind our answer)
        self.session = dataclasses.replace(session, updated_at=self._wrote_ns or session.updated_at)
        self._changed = False
        return self.session

    async def truncate(self) -> None:
        await self.flush()
        await self._take_file()
        closed = self._close_file()  # the next write starts a new file from offset 0
        if closed:
            await closed
        self._changed = True
        self._wrote_ns = time.time_ns()
        self.offset = self._synced = await self._call(W_TRUNCATE, SessionRequest(self.session.session))

    async def write(self, data: bytes | memoryview) -> int:
        """Append ``data``; returns the offset after it (calls may still be in flight)."""
        view = memoryview(data)
        self._changed = True
        self._wrote_ns = time.time_ns()
        if self.local:
            loop = asyncio.get_running_loop()
            if self._file is None:
                if self._opening is None:
                    self._open_file()
                await self._take_file()
            if not isinstance(view.obj, bytes):
                view = memoryview(bytes(view))  # the caller may reuse its buffer
            fut = loop.run_in_executor(self._disk, self._file.append, view)
            self._writes.append((fut, len(view)))
            self._backlog += len(view)
            self.offset += len(view)
            while self._backlog > LOCAL_BACKLOG or (self._writes and self._writes[0][0].done()):
                await self._drain_one()  # bounded memory; an earlier failure surfaces here
            unsynced = self.offset - self._synced
            last = 0 < self.session.total <= self.offset
            if unsynced >= LOCAL_CHUNK or (last and unsynced >= LAST_SYNC):
                # the service hashes what the file holds while we write the next pieces;
                # after the last piece, while the caller answers and asks for the commit
                self._synced = self.offset
                await self._launch(self._sync_after(fut), 2)
            return self.offset
        for start in range(0, len(view), CHUNK):
            piece = bytes(view[start:start + CHUNK])
            await self._launch(self._send(ChunkWrite(self.session.session, self.offset, piece)), WINDOW)
            self.offset += len(piece)
        return self.offset

    async def _send(self, chunk: ChunkWrite) -> int:
        self._unanswered.add(chunk.offset)
        try:
            return await self._call(W_WRITE, chunk)
        finally:
            self._unanswered.discard(chunk.offset)

    def _open_file(self) -> None:
        """Start opening the data file at the current offset, on the disk thread."""
        assert self.session.file is not None
        if self._disk is None:
            self._disk = ThreadPoolExecutor(1, thread_name_prefix="content-write")
        self._opening = asyncio.get_running_loop().run_in_executor(
            self._disk, Appender, self.session.file.path, self.offset)

    async def _take_file(self) -> None:
        """The file being opened becomes the one written (raising what the open raised)."""
        opening, self._opening = self._opening, None
        if opening is not None:
            self._file = await opening

    async def _drain_one(self) -> None:
        fut, n = self._writes.pop(0)
        self._backlog -= n
        await fut

    async def _sync_after(self, written: "asyncio.Future[int]") -> Any:
        return await self._call(W_SYNC, SyncRequest(self.session.session, await written))

    async def _launch(self, call: Any, window: int) -> None:
        self._pending.append(asyncio.ensure_future(call))
        while len(self._pending) >= window:
            await self._pending.pop(0)

    async def flush(self) -> None:
        try:
            while self._writes:
                await self._drain_one()
            while self._pending:
                await self._pending.pop(0)
        finally:
            for task in self._pending:
                task.cancel()
            self._pending.clear()

    async def commit(self, size: int = 0, expected: str = "", labels: dict[str, str] | None = None) -> Info:
        await self.flush()
        try:
            info = await self._call(W_COMMIT, CommitRequest(self.session.session, size, expected, labels or {}),
                                    timeout=max(self.client.timeout, W_COMMIT.timeout))
        except AlreadyExists:
            self._committed = True  # the service ended the session (and dropped the ingest)
            raise
        self._committed = True
        return info

    def committed_file(self) -> int:
        """After a commit of bytes this writer wrote to the data file itself: a new read
        descriptor of that file, now the committed blob (the service renames it in; where
        the blob was there already, an unlinked file of the same bytes). Else -1. The
        caller owns the descriptor."""
        if not self._committed or self._file is None:
            return -1
        return os.dup(self._file.fd)

    async def close(self) -> None:
        """Release the ref (the ingest stays for a later resume); safe to call twice.

        The release goes on even when the caller is cancelled meanwhile (its client went
        away mid-stream): otherwise the ref would stay locked until the service's timeout.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._release())
        await asyncio.shield(self._closing)

    async def _release(self) -> None:
        self._beat.cancel()
        for task in self._pending:
            task.cancel()
        self._pending.clear()
        try:
            await self._take_file()
        except OSError:
            pass  # never opened: nothing to close
        closed = self._close_file()  # queued behind the writes
        if self._disk is not None:
            self._disk.shutdown(wait=False)  # queued work still runs
            self._disk = None
        for fut in [f for f, _ in self._writes] + ([closed] if closed else []):
            try:
                await fut
            except (Exception, asyncio.CancelledError):  # a write cancelled with its caller
                pass  # the ingest keeps what reached the file; a resume starts there
        self._writes.clear()
        if self._committed:
            return
        try:
            await self._call(W_CLOSE, SessionRequest(self.session.session, self._wrote_ns), timeout=W_CLOSE.timeout)
        except FlotillaError:
            pass  # the session ends on the service's idle timeout anyway

    def _close_file(self) -> "asyncio.Future[None] | None":
        """Queue the file's close on the disk thread."""
        if self._file is None or self._disk is None:
            return None
        file, self._file = self._file, None
        return asyncio.wrap_future(self._disk.submit(file.close))

    async def __aenter__(self) -> "Writer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
