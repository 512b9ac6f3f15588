"""Server-side pull through Flotilla's own ``/flotilla.transfer.v1.Transfer/Pull`` method: the
suite fetches and unpacks, the client only watches the progress. containerd (and a suite without
the transfer service) answer Unimplemented; ``Client.pull(server_side=None)`` then pulls itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack
from grpc import aio

from flotilla.libs.distribution import Credentials

from ._conn import translate
from .images import Image
from .pull import Progress, PullOptions

if TYPE_CHECKING:
    from .client import Client

METHOD = "/flotilla.transfer.v1.Transfer/Pull"


def _request(ref: str, opts: PullOptions) -> dict[str, Any]:
    creds = opts.credentials
    if creds is not None and not isinstance(creds, Credentials):
        from flotilla.libs.distribution import parse_reference
        creds = creds(parse_reference(ref).host)
    return {"ref": ref, "platform": str(opts.platform) if opts.platform else "", "all_platforms": opts.all_platforms,
            "unpack": opts.unpack, "snapshotter": opts.snapshotter,
            "username": creds.username if creds else "", "password": creds.password if creds else "",
            "plain_http": opts.plain_http, "concurrency": opts.concurrency}


async def server_pull(client: "Client", ref: str, opts: PullOptions) -> Image:
    call = client._conn.channel.unary_stream(METHOD, request_serializer=msgpack.packb,
                                             response_deserializer=msgpack.unpackb)
    stream = call(_request(ref, opts), metadata=client._conn.metadata())
    try:
        async for msg in stream:
            if "progress" in msg and opts.progress is not None:
                p = msg["progress"]
                opts.progress(Progress(p["key"], p["digest"], p["media_type"], p["offset"], p["total"], p["status"]))
            elif "result" in msg:
                return await client.images.get(msg["result"]["name"])
    except aio.AioRpcError as exc:
        raise translate(exc) from None
    from flotilla.libs.errors import Unknown
    raise Unknown(f"{METHOD}: the stream ended without a result")
