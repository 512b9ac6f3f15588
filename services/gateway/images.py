"""containerd.services.images.v1.Images, backed by the metadata service."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2
from grpc import aio

from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla._api.containerd.api.services.images.v1 import images_pb2_grpc as pbi_grpc
from flotilla.libs.api.metadata import Descriptor, Image, MetadataClient
from flotilla.libs.wire import to_wire

from .protomsg import set_timestamp
from .rpc import namespace, timeout, unary

_SYNC_TIMEOUT = 300.0  # a synchronous delete waits for a whole collection


def image_from_pb(i: pbi.Image) -> Image:
    t = i.target
    return Image(name=i.name, labels=dict(i.labels),
                 target=Descriptor(t.media_type, t.digest, t.size, dict(t.annotations)))


def wire_to_pb(i: dict[str, Any]) -> pbi.Image:
    """An image's wire map into protobuf, without the dataclass on the way (lists)."""
    t = i["target"]
    out = pbi.Image(name=i["name"], labels=i["labels"])
    out.target.media_type, out.target.digest, out.target.size = t["media_type"], t["digest"], t["size"]
    out.target.annotations.update(t["annotations"])
    set_timestamp(out.created_at, i["created_at"])
    set_timestamp(out.updated_at, i["updated_at"])
    return out


class ImagesServicer(pbi_grpc.ImagesServicer):
    def __init__(self, metadata: MetadataClient, default_timeout: float) -> None:
        self.metadata, self.default_timeout = metadata, default_timeout

    @classmethod
    def register(cls, server: aio.Server, metadata: MetadataClient, default_timeout: float) -> None:
        pbi_grpc.add_ImagesServicer_to_server(cls(metadata, default_timeout), server)

    @unary("Images.Get")
    async def Get(self, request: pbi.GetImageRequest, context: aio.ServicerContext) -> pbi.GetImageResponse:
        i = await self.metadata.get_image(namespace(context), request.name, timeout(context, self.default_timeout))
        return pbi.GetImageResponse(image=wire_to_pb(to_wire(i)))

    @unary("Images.List")
    async def List(self, request: pbi.ListImagesRequest, context: aio.ServicerContext) -> pbi.ListImagesResponse:
        found = await self.metadata.list_images_wire(namespace(context), list(request.filters),
                                                     timeout(context, self.default_timeout))
        return pbi.ListImagesResponse(images=[wire_to_pb(i) for i in found])

    @unary("Images.Create")
    async def Create(self, request: pbi.CreateImageRequest, context: aio.ServicerContext) -> pbi.CreateImageResponse:
        i = await self.metadata.create_image(namespace(context), image_from_pb(request.image),
                                             timeout(context, self.default_timeout))
        return pbi.CreateImageResponse(image=wire_to_pb(to_wire(i)))

    @unary("Images.Update")
    async def Update(self, request: pbi.UpdateImageRequest, context: aio.ServicerContext) -> pbi.UpdateImageResponse:
        i = await self.metadata.update_image(namespace(context), image_from_pb(request.image),
                                             list(request.update_mask.paths), timeout(context, self.default_timeout))
        return pbi.UpdateImageResponse(image=wire_to_pb(to_wire(i)))

    @unary("Images.Delete")
    async def Delete(self, request: pbi.DeleteImageRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        limit = _SYNC_TIMEOUT if request.sync else self.default_timeout
        await self.metadata.delete_image(namespace(context), request.name, request.sync, timeout(context, limit))
        return empty_pb2.Empty()
