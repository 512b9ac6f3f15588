"""The generated containerd API modules the gateway uses, under short names."""

from flotilla._api.containerd.api.events import container_pb2 as ev_container  # noqa: F401
from flotilla._api.containerd.api.events import content_pb2 as ev_content  # noqa: F401
from flotilla._api.containerd.api.events import image_pb2 as ev_image  # noqa: F401
from flotilla._api.containerd.api.events import namespace_pb2 as ev_namespace  # noqa: F401
from flotilla._api.containerd.api.events import snapshot_pb2 as ev_snapshot  # noqa: F401
from flotilla._api.containerd.api.events import task_pb2 as ev_task  # noqa: F401
from flotilla._api.containerd.api.services.events.v1 import events_pb2 as events
from flotilla._api.containerd.api.services.events.v1 import events_pb2_grpc as events_grpc
from flotilla._api.containerd.api.services.introspection.v1 import introspection_pb2 as introspection
from flotilla._api.containerd.api.services.introspection.v1 import introspection_pb2_grpc as introspection_grpc
from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2 as namespaces
from flotilla._api.containerd.api.services.namespaces.v1 import namespace_pb2_grpc as namespaces_grpc
from flotilla._api.containerd.api.services.version.v1 import version_pb2 as version
from flotilla._api.containerd.api.services.version.v1 import version_pb2_grpc as version_grpc

__all__ = ["events", "events_grpc", "introspection", "introspection_grpc", "namespaces",
           "namespaces_grpc", "version", "version_grpc"]
