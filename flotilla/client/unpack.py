"""Unpacking an image's layers into snapshots, as containerd's unpacker does (Diff.Apply onto
Snapshots.Prepare, Commit under the chain id)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from flotilla.libs.distribution import Descriptor
from flotilla.libs.errors import AlreadyExists, FailedPrecondition, NotFound

from .content import Content
from .diff import UNCOMPRESSED_LABEL, Diff
from .imageutil import chain_ids
from .snapshots import Snapshots

SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
Ready = Callable[[int], Awaitable[None]]


async def _nothing(i: int) -> None:
    return None


async def unpack_layers(content: Content, snapshots: Snapshots, diff: Diff, config: Descriptor,
                        layers: list[Descriptor], diff_ids: list[str], ready: Ready = _nothing,
                        on_layer: Callable[[int, str], None] | None = None) -> str:
    """Apply each layer onto its parent's snapshot; ``ready(i)`` returns once layer i is in the
    content store (so unpacking starts while later layers still download). Returns the chain id."""
    if len(layers) != len(diff_ids):
        raise FailedPrecondition(f"image has {len(layers)} layers but its config lists {len(diff_ids)} "
                                 "diff ids: failed precondition")
    chain = chain_ids(diff_ids)
    for i, (layer, chain_id) in enumerate(zip(layers, chain)):
        parent = chain[i - 1] if i else ""
        await ready(i)
        if await snapshots.exists(chain_id):
            if on_layer:
                on_layer(i, "exists")
            continue
        labels = {SNAPSHOT_REF_LABEL: chain_id}
        key = f"extract-{time.time_ns() % 10**9}-{uuid.uuid4().hex[:6]} {chain_id}"
        try:
            mounts = await snapshots.prepare(key, parent, labels)
        except AlreadyExists:
            if await snapshots.exists(chain_id):
                continue
            raise
        try:
            applied = await diff.apply(layer, mounts)
            if applied.digest != diff_ids[i]:
                raise FailedPrecondition(f"wrong diff id calculated on extraction {diff_ids[i]} "
                                         f"(got {applied.digest}): failed precondition")
            try:
                await snapshots.commit(chain_id, key, labels)
            except AlreadyExists:
                await _remove(snapshots, key)
                continue
        except BaseException:
            await asyncio.shield(_remove(snapshots, key))
            raise
        await content.set_labels(layer.digest, {UNCOMPRESSED_LABEL: applied.digest})
        if on_layer:
            on_layer(i, "unpacked")
    top = chain[-1] if chain else ""
    if top:
        await content.set_labels(config.digest, {f"containerd.io/gc.ref.snapshot.{snapshots.snapshotter}": top})
    return top


async def _remove(snapshots: Snapshots, key: str) -> None:
    try:
        await snapshots.remove(key)
    except NotFound:
        pass
