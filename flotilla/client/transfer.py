"""Server-side pull through Flotilla's own ``/flotilla.transfer.v1.Transfer/Pull`` method: the
suite fetches and unpacks, the client only watches the progress. containerd (and a suite without
the transfer service) answer Unimplemented; ``Client.pull(server_side=None)`` then pulls itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack
from grpc import aio

from flotilla.libs.distribution import Credentials, Descriptor

from ._conn import translate
from .images import Image
from .pull import Progress, PullOptions
from .push import PushOptions

if TYPE_CHECKING:
    from .client import Client

METHOD = "/flotilla.transfer.v1.Transfer/Pull"
PUSH_METHOD = "/flotilla.transfer.v1.Transfer/Push"


def _credentials(ref: str, opts: PullOptions | PushOptions) -> Credentials | None:
    creds = opts.credentials
    if creds is not None and not isinstance(creds, Credentials):
        from flotilla.libs.distribution import parse_reference
        creds = creds(parse_reference(ref).host)
    return creds


def _request(ref: str, opts: PullOptions) -> dict[str, Any]:
    creds = _credentials(ref, opts)
    return {"ref": ref, "platform": str(opts.platform) if opts.platform else "", "all_platforms": opts.all_platforms,
            "unpack": opts.unpack, "snapshotter": opts.snapshotter,
            "username": creds.username if creds else "", "password": creds.password if creds else "",
            "plain_http": opts.plain_http, "concurrency": opts.concurrency}


async def _call(client: "Client", method: str, request: dict[str, Any], opts: PullOptions | PushOptions
                ) -> dict[str, Any]:
    call = client._conn.channel.unary_stream(method, request_serializer=msgpack.packb,
                                             response_deserializer=msgpack.unpackb)
    stream = call(request, metadata=client._conn.metadata())
    try:
        async for msg in stream:
            if "progress" in msg and opts.progress is not None:
                p = msg["progress"]
                opts.progress(Progress(p["key"], p["digest"], p["media_type"], p["offset"], p["total"], p["status"]))
            elif "result" in msg:
                return dict(msg["result"])
    except aio.AioRpcError as exc:
        raise translate(exc) from None
    from flotilla.libs.errors import Unknown
    raise Unknown(f"{method}: the stream ended without a result")


async def server_pull(client: "Client", ref: str, opts: PullOptions) -> Image:
    result = await _call(client, METHOD, _request(ref, opts), opts)
    return await client.images.get(result["name"])


async def server_push(client: "Client", local: str, ref: str, opts: PushOptions) -> Descriptor:
    creds = _credentials(ref, opts)
    result = await _call(client, PUSH_METHOD, {
        "name": local, "ref": ref, "username": creds.username if creds else "",
        "password": creds.password if creds else "", "plain_http": opts.plain_http,
        "concurrency": opts.concurrency}, opts)
    return Descriptor(result["media_type"], result["digest"], result["size"])
