"""The gateway behind its front: the bus and every servicer of containerd's API."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

from grpc import aio

from flotilla.libs import service
from flotilla.libs.api.metadata import MetadataClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.service import Cleanup

from . import h2grpc, pb, proxy_sockets, ttrpc
from .events import EventHub, EventsServicer
from .fallback import UnimplementedHandler
from .front import MAX_MESSAGE, Front
from .introspection import IntrospectionServicer
from .namespaces import NamespacesServicer
from .network import NetworksServicer
from .containers import ContainerRecords, ContainersServicer
from .content import ContentServicer
from .images import ImagesServicer
from .leases import LeasesServicer
from .snapshots import SnapshotsServicer
from .diff import DiffServicer
from .tasks import TasksServicer
from .transfer import TransferServicer
from .version import VersionServicer

log = logging.getLogger("flotilla.gateway")


def _revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=2)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


async def build(bus: Bus, cfg: Config, server: aio.Server | h2grpc.Server, ttrpc_server: ttrpc.Server | None = None) -> None:
    """Every servicer of containerd's API, on ``server`` (the front's, health on it already)."""
    hub = EventHub(bus, cfg.prefix, cfg.host)
    await hub.start()
    metadata = MetadataClient(bus, cfg.prefix, cfg.host_id)  # containers' host: see metadata/__main__
    pb.version_grpc.add_VersionServicer_to_server(VersionServicer(_revision()), server)
    NamespacesServicer.register(server, metadata, cfg.request_timeout, hub)
    pb.introspection_grpc.add_IntrospectionServicer_to_server(IntrospectionServicer(bus, cfg), server)
    events = EventsServicer(hub)
    pb.events_grpc.add_EventsServicer_to_server(events, server)
    if ttrpc_server is not None:  # the same servicer answers ttrpc's Events.Forward (docs/ttrpc.md)
        ttrpc.register_events(ttrpc_server, events)
    containers = ContainerRecords(metadata, hub)
    ContainersServicer.register(server, containers, cfg.request_timeout)
    ImagesServicer.register(server, metadata, cfg.request_timeout, hub)
    LeasesServicer.register(server, metadata, cfg.request_timeout)
    await ContentServicer.register(server, bus, cfg, hub)
    SnapshotsServicer.register(server, bus, cfg, hub)
    DiffServicer.register(server, bus, cfg)
    TasksServicer.register(server, bus, cfg, containers, hub)
    TransferServicer.register(server, bus, cfg)
    NetworksServicer.register(server, bus, cfg)
    server.add_generic_rpc_handlers([UnimplementedHandler()])


async def serve(cfg: Config, front: Front) -> None:
    """The gateway behind ``front`` until it is told to stop."""
    async def setup(bus: Bus, cfg: Config) -> Cleanup:
        await build(bus, cfg, front.grpc, front.ttrpc)
        # containerds using Flotilla as their content store and snapshotter (docs/integrators.md)
        stop_proxies = await proxy_sockets.serve(front.grpc, bus, cfg, MAX_MESSAGE)
        if front.stop_accepting is None:
            await front.listen(cfg.socket_path)
        front.opening.opened()

        async def stop() -> None:
            assert front.stop_accepting is not None
            await front.stop_accepting()
            grace = cfg.drain_grace
            await asyncio.gather(front.ttrpc.stop(grace=grace), front.grpc.stop(grace=grace), stop_proxies(grace))

        return stop

    await service.serve("gateway", setup, cfg)
