"""Checkpoints into the content store, and restores from it, as containerd 1.6's tasks service.

Checkpoint: the task is checkpointed into a temporary directory, which is written into the
content store as one tar (``CHECKPOINT_TAR``, laid out as containerd's ``archive.Diff`` of the
directory against nothing), with the container's spec beside it (``CHECKPOINT_CONFIG``); both
are held by the caller's lease. Restore: the tar is fetched, unpacked into a temporary
directory and the task is created from it with the runtime's ``restore``.

The blobs go through the content service's contract over the bus (its client reads and writes
the files directly on its host). Nothing outlives a call, whatever fails: the temporary
directories are removed (and, at start, those a killed service left), an ingest not committed
is aborted. A blob committed before a later failure is left to the lease: its caller's lease
ends with the caller (``ctr`` deletes its own), as with containerd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from flotilla.libs.api.content import ContentClient
from flotilla.libs.api.runtime import CHECKPOINT_CONFIG, CHECKPOINT_TAR, Descriptor
from flotilla.libs.errors import FlotillaError, InvalidArgument, NotFound, Unknown


if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("flotilla.runtime.checkpoints")
PIECE = 1 << 20
# containerd's own temporary directories' names: one to checkpoint into, one to restore from
CHECKPOINT_PREFIX, RESTORE_PREFIX = "ctd-checkpoint", "ctrd-checkpoint"


def _entries(root: Path, rel: str = "") -> list[tuple[Path, str]]:
    """Every path under ``root`` with its name in the tar, in the order Go's filepath.Walk
    visits them (names sorted, a directory before its contents)."""
    out = []
    for name in sorted(os.listdir(root / rel)):
        sub = f"{rel}/{name}" if rel else name
        out.append((root / sub, sub))
        if (root / sub).is_dir() and not (root / sub).is_symlink():
            out += _entries(root, sub)
    return out


def pack(directory: Path, out: int) -> None:
    """Write ``directory`` as a tar to the descriptor ``out`` (closed after): PAX, names
    relative, numeric owners, mtimes in whole seconds, sockets left out, as containerd's
    ChangeWriter writes them."""
    with open(out, "wb", buffering=PIECE) as f, \
            tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, name in _entries(directory):
            info = tar.gettarinfo(str(path), name)
            if info is None:  # a socket
                continue
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)
            if info.isreg():
                with open(path, "rb") as src:
                    tar.addfile(info, src)
            else:
                tar.addfile(info)


def unpack(tar_path: str, directory: Path) -> None:
    """Unpack a checkpoint tar into ``directory``; nothing may land outside it."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            tar.extractall(directory, numeric_owner=True, filter="tar")
    except tarfile.ReadError:
        # containerd's tasks service passes these errors on as they are (so Unknown), in Go's words
        raise Unknown("archive/tar: invalid tar header") from None
    except tarfile.FilterError as exc:
        raise Unknown(f"failed to extract checkpoint: {exc}") from None


class _TarStream:
    """A directory as a tar, read from a pipe a packing thread writes; counts its bytes."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.size = directory, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        packing = loop.run_in_executor(None, pack, self.directory, wfd)
        reader = asyncio.StreamReader(limit=4 * PIECE)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(rfd, "rb", 0))
        try:
            while piece := await reader.read(PIECE):
                self.size += len(piece)
                yield piece
            await packing  # its error, if it failed: the blob is not committed
        finally:
            transport.close()  # a packer still writing gets EPIPE and ends
            await asyncio.gather(packing, return_exceptions=True)


class Checkpoints:
    def __init__(self, content: ContentClient, scratch: Path) -> None:
        self.content, self.scratch = content, scratch

    def clear(self) -> None:
        """At start: remove what a killed service left in its scratch directory."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True, exist_ok=True)

    async def _temporary(self, prefix: str) -> Path:
        await asyncio.to_thread(self.scratch.mkdir, parents=True, exist_ok=True)
        return Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=prefix, dir=self.scratch))

    @staticmethod
    async def discard(path: Path) -> None:
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def checkpoint(self, engine: "Engine", ns: str, id: str, exit: bool = False, work_path: str = "",
                         lease: str = "", config: bytes = b"") -> list[Descriptor]:
        """Checkpoint the task into the content store: the CRIU tar's and the config's descriptors."""
        image = await self._temporary(CHECKPOINT_PREFIX)
        try:
            await engine.checkpoint(ns, id, str(image), exit, work_path)
            # containerd names the ingests after the directory, as here
            stream = _TarStream(image)
            async with aclosing(stream.__aiter__()) as pieces:
                digest = await self._write(ns, str(image), pieces, lease)
            out = [Descriptor(CHECKPOINT_TAR, digest, stream.size)]
            digest = await self._write(ns, str(image / "spec"), config, lease)
            return out + [Descriptor(CHECKPOINT_CONFIG, digest, len(config))]
        finally:
            await self.discard(image)

    async def _write(self, ns: str, ref: str, data: AsyncIterator[bytes] | bytes, lease: str) -> str:
        try:
            return await self.content.write_blob(ns, ref, data, lease=lease)
        except BaseException:
            # the content service keeps an ingest for a resume that will never come
            try:
                await asyncio.shield(self.content.abort(ns, ref))
            except NotFound:
                pass
            except FlotillaError as exc:
                log.warning("aborting the checkpoint ingest %s: %s", ref, exc)
            raise

    async def unpacked(self, ns: str, desc: Descriptor) -> Path:
        """The checkpoint tar ``desc`` unpacked in a new temporary directory: the caller's to
        ``discard`` (a restore reads it at the task's start)."""
        directory = await self._temporary(RESTORE_PREFIX)
        try:
            async with self._blob(ns, desc.digest, directory) as tar_path:
                await asyncio.to_thread(unpack, tar_path, directory)
        except BaseException:
            await self.discard(directory)
            raise
        return directory

    @asynccontextmanager
    async def _blob(self, ns: str, digest: str, beside: Path) -> AsyncIterator[str]:
        """The blob's file: the content store's own on its host, else a copy fetched over the bus."""
        copy = beside.with_name(beside.name + ".tar")
        try:
            try:
                path = await self.content.local_path(ns, digest) if self.content.local else None
                if path is None:
                    f = await asyncio.to_thread(copy.open, "wb")
                    try:
                        async for piece in self.content.read(ns, digest):
                            await asyncio.to_thread(f.write, piece)
                    finally:
                        await asyncio.to_thread(f.close)
            except (NotFound, InvalidArgument):
                raise Unknown(f"content digest {digest}: not found") from None  # (as containerd's)
            yield path or str(copy)
        finally:
            await asyncio.to_thread(copy.unlink, True)
