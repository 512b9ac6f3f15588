"""containerd.services.images.v1.Images, backed by the metadata service."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2
from grpc import aio

from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla._api.containerd.api.services.images.v1 import images_pb2_grpc as pbi_grpc
from flotilla.libs.api import events as ev
from flotilla.libs.api.metadata import Descriptor, Image, MetadataClient
from flotilla.libs.wire import to_wire

from .events import EventHub
from .protomsg import constructor_fields
from .records import RecordCache, event_key
from .rpc import namespace, preencoded, timeout, unary

_SYNC_TIMEOUT = 300.0  # a synchronous delete waits for a whole collection


def image_from_pb(i: pbi.Image) -> Image:
    t = i.target
    return Image(name=i.name, labels=dict(i.labels),
                 target=Descriptor(t.media_type, t.digest, t.size, dict(t.annotations)))


def wire_to_pb(i: dict[str, Any]) -> pbi.Image:
    """An image's wire map into protobuf, without the dataclass on the way."""
    return pbi.Image(**constructor_fields(i))


class ImagesServicer(pbi_grpc.ImagesServicer):
    def __init__(self, metadata: MetadataClient, default_timeout: float) -> None:
        self.metadata, self.default_timeout = metadata, default_timeout
        self._records: RecordCache[Image] = RecordCache()  # each ctr run gets its image

    @classmethod
    def register(cls, server: aio.Server, metadata: MetadataClient, default_timeout: float, hub: EventHub) -> None:
        servicer = cls(metadata, default_timeout)
        servicer._records.drop_on(hub, (ev.ImageUpdate.TOPIC, ev.ImageDelete.TOPIC), event_key("name"))
        pbi_grpc.add_ImagesServicer_to_server(servicer, server)

    @unary("Images.Get")
    async def Get(self, request: pbi.GetImageRequest, context: aio.ServicerContext) -> pbi.GetImageResponse:
        ns, limit = namespace(context), timeout(context, self.default_timeout)
        i = await self._records.fetch((ns, request.name), lambda: self.metadata.get_image(ns, request.name, limit))
        return pbi.GetImageResponse(image=wire_to_pb(to_wire(i)))

    @unary("Images.List")
    async def List(self, request: pbi.ListImagesRequest, context: aio.ServicerContext) -> pbi.ListImagesResponse:
        # encoded by the metadata service as containerd encodes it, sent as it is
        found = await self.metadata.list_images_encoded(namespace(context), list(request.filters),
                                                        timeout(context, self.default_timeout))
        return preencoded(context, found, pbi.ListImagesResponse)

    @unary("Images.Create")
    async def Create(self, request: pbi.CreateImageRequest, context: aio.ServicerContext) -> pbi.CreateImageResponse:
        ns = namespace(context)
        i = await self._records.keep((ns, request.image.name), self.metadata.create_image(
            ns, image_from_pb(request.image), timeout(context, self.default_timeout)))
        return pbi.CreateImageResponse(image=wire_to_pb(to_wire(i)))

    @unary("Images.Update")
    async def Update(self, request: pbi.UpdateImageRequest, context: aio.ServicerContext) -> pbi.UpdateImageResponse:
        ns = namespace(context)
        i = await self._records.change((ns, request.image.name), self.metadata.update_image(
            ns, image_from_pb(request.image), list(request.update_mask.paths), timeout(context, self.default_timeout)))
        return pbi.UpdateImageResponse(image=wire_to_pb(to_wire(i)))

    @unary("Images.Delete")
    async def Delete(self, request: pbi.DeleteImageRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        limit = _SYNC_TIMEOUT if request.sync else self.default_timeout
        ns = namespace(context)
        await self._records.change((ns, request.name), self.metadata.delete_image(
            ns, request.name, request.sync, timeout(context, limit)))
        return empty_pb2.Empty()
