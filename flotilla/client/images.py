"""Image records (name -> target descriptor)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from google.protobuf import field_mask_pb2

from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pb
from flotilla._api.containerd.api.services.images.v1 import images_pb2_grpc as pb_grpc
from flotilla.libs.distribution import Descriptor

from ._conn import Conn, rpc
from .types import desc_from_pb, desc_to_pb, ts


@dataclass
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: _dt.datetime | None = None
    updated_at: _dt.datetime | None = None

    @staticmethod
    def from_pb(p: pb.Image) -> "Image":
        return Image(p.name, desc_from_pb(p.target), dict(p.labels), ts(p.created_at), ts(p.updated_at))

    def to_pb(self) -> pb.Image:
        return pb.Image(name=self.name, target=desc_to_pb(self.target), labels=dict(self.labels))


class Images:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._stub = pb_grpc.ImagesStub(conn.channel)

    @rpc
    async def get(self, name: str) -> Image:
        resp = await self._stub.Get(pb.GetImageRequest(name=name), metadata=self._conn.metadata())
        return Image.from_pb(resp.image)

    @rpc
    async def list(self, *filters: str) -> list[Image]:
        resp = await self._stub.List(pb.ListImagesRequest(filters=list(filters)), metadata=self._conn.metadata())
        return [Image.from_pb(i) for i in resp.images]

    @rpc
    async def create(self, image: Image) -> Image:
        resp = await self._stub.Create(pb.CreateImageRequest(image=image.to_pb()), metadata=self._conn.metadata())
        return Image.from_pb(resp.image)

    @rpc
    async def update(self, image: Image, *paths: str) -> Image:
        mask = field_mask_pb2.FieldMask(paths=list(paths)) if paths else None
        resp = await self._stub.Update(pb.UpdateImageRequest(image=image.to_pb(), update_mask=mask),
                                       metadata=self._conn.metadata())
        return Image.from_pb(resp.image)

    async def put(self, image: Image) -> Image:
        """Create the record, or point an existing one at the new target (as ctr's pull does)."""
        from flotilla.libs.errors import AlreadyExists
        try:
            return await self.create(image)
        except AlreadyExists:
            return await self.update(image, "target", "labels")

    @rpc
    async def delete(self, name: str, sync: bool = False) -> None:
        await self._stub.Delete(pb.DeleteImageRequest(name=name, sync=sync), metadata=self._conn.metadata())
