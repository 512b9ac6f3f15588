"""The gateway's gRPC server on the UNIX socket."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from grpc import aio

from flotilla.libs.api.metadata import MetadataClient
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config

from . import h2grpc, health, listener, pb, ttrpc
from .events import EventHub, EventsServicer
from .fallback import UnimplementedHandler
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
MAX_MESSAGE = 16 << 20  # containerd's own limit


def _revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=2)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def new_server() -> aio.Server | h2grpc.Server:
    """Our own HTTP/2 server (h2grpc) unless FLOTILLA_GRPC_SERVER=grpcio asks for grpcio's,
    kept to compare the two side by side (bench)."""
    if os.environ.get("FLOTILLA_GRPC_SERVER", "h2grpc") == "grpcio":
        return aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                   ("grpc.max_send_message_length", MAX_MESSAGE)])
    return h2grpc.Server(max_message=MAX_MESSAGE)


async def build(bus: Bus, cfg: Config, ttrpc_server: ttrpc.Server | None = None) -> aio.Server | h2grpc.Server:
    server = new_server()
    hub = EventHub(bus, cfg.prefix, cfg.host)
    await hub.start()
    metadata = MetadataClient(bus, cfg.prefix, cfg.host_id)  # containers' host: see metadata/__main__
    pb.version_grpc.add_VersionServicer_to_server(VersionServicer(_revision()), server)
    health.register(server)
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
    return server


async def listen(server: aio.Server | h2grpc.Server, ttrpc_server: ttrpc.Server,
                 socket_path: str) -> Callable[[], Awaitable[None]]:
    """Serve both APIs on the socket a supervisor passed down, or on our own; returns what
    stops taking connections (without closing a socket other gateways share)."""
    if isinstance(server, aio.Server):  # grpcio's server binds its own path (bench only)
        await ttrpc_server.start(socket_path + ".ttrpc", mode=0o660)
        server.add_insecure_port(f"unix://{socket_path}")
        await server.start()
        return ttrpc_server.stop
    sock = listener.inherited() or listener.bind(socket_path)
    listener.link(socket_path, socket_path + ".ttrpc")  # containerd's ttrpc clients look there
    accepting = await listener.serve(sock, server.protocol, ttrpc_server.protocol)
    log.info("serving containerd's gRPC and ttrpc APIs on %s (and .ttrpc)", socket_path)
    return accepting.close
