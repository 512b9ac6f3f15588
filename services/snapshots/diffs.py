"""Diff Apply and Diff: where a layer goes, getting its bytes, and the worker processes.

Tar work runs in a process pool (one worker per CPU), so independent layers, each applied
into its own snapshot, unpack in parallel instead of taking turns on one interpreter lock.

Apply targets, as containerd's applier chooses them:
* one overlay mount with an ``upperdir``: the layer goes straight into the upper dir,
  whiteouts in overlay form, the lowerdirs consulted for hardlinks to lower files;
* one read-write bind mount: straight into its source directory, whiteouts as deletions;
* anything else: mounted on a temporary directory, whiteouts as deletions.

A detached apply (a parallel unpack's) takes one read-write bind mount of an overlay
snapshot made without its parent: whiteouts in overlay form, and FailedPrecondition for a
layer that needs its parent's files (the caller then applies it onto its parent).

A layer may also be applied ahead of its Diff.Apply, as soon as its blob is committed
(ahead.py): the Diff.Apply then moves it into place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from flotilla.libs import mount as mnt
from flotilla.libs.api.content import ContentClient
from flotilla.libs.errors import FailedPrecondition, FlotillaError, InvalidArgument, NotFound, Unimplemented, Unknown
from flotilla.libs.process import keep_freed_memory

from . import applier, differ
from .ahead import AheadLayers
from .api import LABEL_UNCOMPRESSED, Descriptor, Mount

log = logging.getLogger("flotilla.snapshots.diff")
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_COMPRESSION = {LAYER_TAR: "", LAYER_GZIP: "gzip", "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
                "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip"}


def _option(m: Mount, key: str) -> str | None:
    prefix = key + "="
    return next((o[len(prefix):] for o in m.options if o.startswith(prefix)), None)


@dataclass(frozen=True)
class _Direct:
    """A directory a layer is applied straight into, without mounting anything."""
    root: str
    overlay: bool     # an overlay upper dir: whiteouts in overlay form
    lower: list[str]  # its lower dirs, consulted for hardlinks and directories' metadata


def _direct(mounts: list[Mount]) -> _Direct | None:
    """One overlay mount's upper dir, or one read-write bind mount's source (as containerd's
    applier chooses them); None: the mounts are mounted and the layer applied through them."""
    if len(mounts) != 1:
        return None
    m = mounts[0]
    upper = _option(m, "upperdir") if m.type == "overlay" else None
    if upper:
        return _Direct(upper, True, [d for d in (_option(m, "lowerdir") or "").split(":") if d])
    if m.type == "bind" and "ro" not in m.options:
        return _Direct(m.source, False, [])
    return None


def readonly(mounts: list[Mount]) -> list[Mount]:
    """The same tree, read-only: an overlay's upper dir becomes its top lowerdir."""
    out = []
    for m in mounts:
        if m.type == "overlay":
            upper, lower = _option(m, "upperdir"), _option(m, "lowerdir") or ""
            dirs = ([upper] if upper else []) + [d for d in lower.split(":") if d]
            if len(dirs) == 1:
                out.append(Mount(type="bind", source=dirs[0], options=["ro", "rbind"]))
                continue
            opts = [o for o in m.options if not o.startswith(("upperdir=", "workdir=", "lowerdir="))]
            out.append(Mount(type="overlay", source=m.source, options=opts + ["lowerdir=" + ":".join(dirs)]))
        else:
            opts = [o for o in m.options if o not in ("rw", "ro")] + ["ro"]
            out.append(Mount(type=m.type, source=m.source, target=m.target, options=opts))
    return out


def _worker_init(parent: int) -> None:
    """Die with the service: a SIGKILLed service must not leave workers writing layers.

    And keep freed heap memory, as the service processes do (a spawned worker starts with
    glibc's defaults): a layer streams through pieces of 0.25-1 MiB, each of which was
    mapped anew and faulted in, about 40,000 faults and 100-200 ms of system time per
    64 MiB layer here, against 1,000 with the heap kept.
    """
    import ctypes
    import signal
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:     # it died before the line above
        os._exit(1)
    # a graceful stop signals the whole process group (supervisord's stopasgroup): the
    # service finishes the layers under way and then ends its workers itself
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()


class Differ:
    def __init__(self, content: ContentClient, scratch: Path, workers: int | None = None,
                 ahead: AheadLayers | None = None) -> None:
        self.content = content
        self.scratch = scratch
        self.ahead = ahead  # where layers applied ahead wait (None: none are)
        self._ahead_tasks: set[asyncio.Task[None]] = set()
        scratch.mkdir(parents=True, exist_ok=True)
        # spawn: workers never inherit the event loop or the NATS connection; they are this
        # process' children and die with it (see _worker_init)
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers or os.cpu_count() or 2, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init, initargs=(os.getpid(),))

    async def warm(self) -> None:
        """Start every worker now, not under the first layers (a spawn costs ~0.1 s)."""
        n = self.pool._max_workers  # type: ignore[attr-defined]
        await asyncio.gather(*(self._run(os.getpid) for _ in range(n)))

    def close(self) -> None:
        for task in self._ahead_tasks:
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    @asynccontextmanager
    async def _mounted(self, mounts: list[Mount]) -> AsyncIterator[str]:
        if len(mounts) == 1 and mounts[0].type == "bind" and not mounts[0].target:
            yield mounts[0].source  # a bind is its source: no mount needed
            return
        target = Path(tempfile.mkdtemp(prefix="mnt-", dir=self.scratch))
        try:
            try:
                await asyncio.to_thread(mnt.mount_all, mounts, str(target))
            except OSError as exc:  # containerd's answer (Unknown) and words for a mount refused
                raise Unknown(f"failed to mount {target}: "
                              f"{os.strerror(exc.errno).lower() if exc.errno else exc}") from None
            try:
                yield str(target)
            finally:
                await asyncio.to_thread(mnt.unmount_all, str(target))
        finally:
            os.rmdir(target)

    @asynccontextmanager
    async def _blob(self, namespace: str, desc: Descriptor) -> AsyncIterator[str]:
        path = await self.content.local_path(namespace, desc.digest) if self.content.local else None
        if path is not None:
            yield path
            return
        tmp = self.scratch / f"blob-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                async for piece in self.content.read(namespace, desc.digest):
                    await asyncio.to_thread(f.write, piece)
            yield str(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    async def apply(self, namespace: str, desc: Descriptor, mounts: list[Mount], detached: bool = False) -> Descriptor:
        if desc.media_type not in applier.MEDIA_TYPES:
            # as containerd: the blob is looked up first, so a missing one is NotFound
            # whatever its media type; a stored one of an unknown type is containerd's Unknown
            await self.content.info(namespace, desc.digest)
            raise Unknown(f"failed to get stream processor for {desc.media_type}: no processor for media-type")
        if not mounts:
            raise InvalidArgument("no mounts to apply the layer onto: invalid argument")
        direct = _direct(mounts)
        if detached and (direct is None or direct.overlay):
            raise InvalidArgument("a detached apply takes one read-write bind mount: invalid argument")
        expected = desc.annotations.get(LABEL_UNCOMPRESSED, "")
        taken = await self._take_ahead(namespace, desc.digest, direct) if direct and not detached else None
        if taken is not None:
            if err := applier.diff_id_error(taken.digest, expected):
                raise Unknown(err)
            return Descriptor(media_type=LAYER_TAR, digest=taken.digest, size=taken.size)
        async with self._blob(namespace, desc) as blob:
            if direct is not None:  # detached: a plain directory whose whiteouts take the overlay form
                done = await self._apply(blob, desc.media_type, direct.root, direct.overlay or detached,
                                         direct.lower, expected, detached=detached)
            else:
                async with self._mounted(mounts) as root:
                    done = await self._apply(blob, desc.media_type, root, False, [], expected)
        return Descriptor(media_type=LAYER_TAR, digest=done.digest, size=done.size)

    def apply_ahead(self, namespace: str, digest: str) -> None:
        """Start applying the layer ``digest`` ahead of its Diff.Apply (ahead.py), unless it
        is already; returns at once."""
        ahead = self.ahead
        layer = ahead.claim(namespace, digest) if ahead is not None else None
        if ahead is None or layer is None:
            return

        async def run() -> None:
            applied = None
            try:
                async with self._blob(namespace, Descriptor(media_type=LAYER_TAR, digest=digest, size=0)) as blob:
                    # detached: no parent consulted; a layer that would need one is refused
                    applied = await self._apply(blob, LAYER_TAR, str(layer.path), True, [], "", detached=True)
            except FlotillaError as exc:  # its Diff.Apply applies it as usual, and says why
                log.debug("layer %s not applied ahead: %s", digest, exc.message)
            except Exception:  # a bug: the Diff.Apply still applies it
                log.exception("applying layer %s ahead", digest)
            finally:
                ahead.finish(layer, applied)

        task = asyncio.ensure_future(run())
        self._ahead_tasks.add(task)
        task.add_done_callback(self._ahead_tasks.discard)

    async def _take_ahead(self, namespace: str, digest: str, direct: "_Direct") -> applier.Applied | None:
        """The layer applied ahead, moved into the apply's directory, if it can be."""
        if self.ahead is None:
            return None
        return await self.ahead.take(namespace, digest, direct.root, plain=not direct.overlay)

    async def _apply(self, blob: str, media_type: str, root: str, overlay: bool, parents: list[str],
                     expected: str, detached: bool = False) -> applier.Applied:
        try:
            return await self._run(applier.apply_layer, blob, media_type, root, overlay, parents, expected, detached)
        except applier.ParentNeeded as exc:
            raise FailedPrecondition(f"layer needs its parent: {exc}: failed precondition") from None
        except applier.LayerError as exc:
            raise Unknown(str(exc)) from None
        except OSError as exc:
            raise Unknown(f"failed to apply layer: {exc}") from None

    async def diff(self, namespace: str, left: list[Mount], right: list[Mount], media_type: str,
                   ref: str, labels: dict[str, str], lease: str = "") -> Descriptor:
        media_type = media_type or LAYER_GZIP
        if media_type not in _COMPRESSION:
            raise Unimplemented(f"unsupported diff media type: {media_type}: not implemented")  # containerd's code
        out = self.scratch / f"diff-{uuid.uuid4().hex}"
        try:
            async with self._mounted(readonly(left)) as lower, self._mounted(readonly(right)) as upper:
                written = await self._run(differ.write_diff, lower, upper, str(out), _COMPRESSION[media_type])
            labels = {**labels, LABEL_UNCOMPRESSED: written.uncompressed}

            async def chunks() -> AsyncIterator[bytes]:
                with open(out, "rb") as f:
                    while piece := await asyncio.to_thread(f.read, 8 << 20):
                        yield piece

            digest = await self.content.write_blob(namespace, ref or f"diff-{uuid.uuid4().hex}", chunks(),
                                                   expected=written.digest, total=written.size, labels=labels,
                                                   lease=lease)
            if digest != written.digest:
                raise Unknown(f"content store stored {digest}, expected {written.digest}")
        except NotFound:
            raise
        finally:
            out.unlink(missing_ok=True)
        return Descriptor(media_type=media_type, digest=written.digest, size=written.size,
                          annotations={LABEL_UNCOMPRESSED: written.uncompressed})


def clear_scratch(scratch: Path) -> None:
    """At start: unmount and remove what a killed process left in its scratch directory."""
    if not scratch.exists():
        return
    for entry in scratch.iterdir():
        if entry.name.startswith("mnt-"):
            mnt.unmount_all(str(entry), lazy_if_busy=True)
        shutil.rmtree(entry, ignore_errors=True)
