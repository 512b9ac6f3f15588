"""Layers applied ahead of their ``Diff.Apply``, while the client still fetches the others.

containerd's client pull (``ctr image pull``) writes each layer with Content.Write and then,
layer by layer in chain order, prepares a snapshot and asks Diff.Apply for it: each apply
waits for the one before, and none starts before its blob is all there. The gateway tells
this service when the blob of a layer (an ingest ref of containerd's ``layer-`` kind) is
committed, and the layer is applied at once, detached (into a directory of its own, no
parent layers: docs/snapshots.md), beside the others. The Diff.Apply of that blob in that
namespace then finds it done or under way and moves the tree into the snapshot the client
prepared, when that gives exactly what applying would: a layer that needs its parents' files
(the detached apply refuses it), one with whiteouts applied onto a plain directory (whose
whiteouts are deletions), or a target that is not empty is applied as usual.

Nothing here is a snapshot: a layer applied ahead and not taken is removed ``ttl`` seconds
after it is done (or when more than ``limit`` wait), and everything is removed at start.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flotilla.libs.errors import Unknown

from .applier import OPAQUE_XATTR, Applied

log = logging.getLogger("flotilla.snapshots.ahead")
TTL = 300.0  # seconds a layer applied ahead waits for its Diff.Apply
LIMIT = 32   # layers applied ahead waiting at once; the oldest goes first


@dataclass
class AheadLayer:
    namespace: str
    digest: str
    path: Path  # the directory it is applied into
    done: asyncio.Future[Applied | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    finished_at: float = 0.0
    taken: bool = False  # by a Diff.Apply, which removes what is left of it


class AheadLayers:
    def __init__(self, root: Path, ttl: float = TTL, limit: int = LIMIT) -> None:
        self.root, self.ttl, self.limit = root, ttl, limit
        self._layers: dict[tuple[str, str], AheadLayer] = {}
        self.taken = 0  # layers moved into a snapshot instead of applied again (tests, metrics)

    def clear(self) -> None:
        """At start: what a stopped instance applied ahead goes."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def claim(self, namespace: str, digest: str) -> AheadLayer | None:
        """A new layer to apply ahead, or None if that blob is applied ahead already."""
        key = (namespace, digest)
        if key in self._layers:
            return None
        # too many wait: the one done longest ago goes
        waiting = sorted((la for la in self._layers.values() if la.done.done()), key=lambda la: la.finished_at)
        for layer in waiting[:max(0, len(self._layers) + 1 - self.limit)]:
            self._expire(layer)
        layer = self._layers[key] = AheadLayer(namespace, digest, self.root / uuid.uuid4().hex)
        layer.path.mkdir(mode=0o755)
        return layer

    def finish(self, layer: AheadLayer, applied: Applied | None) -> None:
        """``applied`` None: it cannot be used (its Diff.Apply applies the layer itself)."""
        layer.finished_at = time.monotonic()
        layer.done.set_result(applied)
        if applied is None:
            self._expire(layer)
        else:
            asyncio.get_running_loop().call_later(self.ttl, self._expire, layer)

    async def take(self, namespace: str, digest: str, target: str, plain: bool) -> Applied | None:
        """Move the layer applied ahead into the empty directory ``target`` (``plain``: not an
        overlay upper dir) if that is what applying it there gives; None: apply it."""
        layer = self._layers.pop((namespace, digest), None)
        if layer is None:
            return None
        layer.taken = True
        applied = await asyncio.shield(layer.done)
        try:
            if applied is None or (plain and applied.whiteouts):
                return None
            if not await asyncio.to_thread(_move_tree, layer.path, Path(target)):
                return None
            self.taken += 1
            log.info("layer %s applied ahead, moved into place", digest)
            return applied
        finally:
            await asyncio.to_thread(shutil.rmtree, layer.path, True)

    def _expire(self, layer: AheadLayer) -> None:
        """Drop ``layer`` unless taken meanwhile (its tree removed in a thread: it may be big)."""
        if layer.taken:
            return
        if self._layers.get((layer.namespace, layer.digest)) is layer:
            del self._layers[(layer.namespace, layer.digest)]
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, layer.path, True)


def _move_tree(source: Path, target: Path) -> bool:
    """Rename every entry of ``source`` into the empty ``target`` (same file system), and its
    opaque mark. False, and nothing moved, when that cannot be done."""
    try:
        if any(target.iterdir()):
            return False
        names = sorted(os.listdir(source))
    except OSError:
        return False
    for i, name in enumerate(names):
        try:
            os.rename(source / name, target / name)
        except OSError as exc:
            if i == 0 and exc.errno == errno.EXDEV:  # another file system: nothing moved yet
                return False
            raise Unknown(f"failed to apply layer: moving {name} into place: {exc}") from None
    try:
        os.setxattr(target, OPAQUE_XATTR, os.getxattr(source, OPAQUE_XATTR))
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise Unknown(f"failed to apply layer: {exc}") from None
    return True
