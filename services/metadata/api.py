"""The metadata service's routes and message schemas.

The contract itself lives in ``flotilla.libs.api.metadata`` so the gateway and other
services can use it without importing this service.
"""

from flotilla.libs.api.metadata import *  # noqa: F401,F403
from flotilla.libs.api.metadata import (  # noqa: F401  (named for type checkers)
    NAMESPACE_CREATE, NAMESPACE_DELETE, NAMESPACE_GET, NAMESPACE_LIST, NAMESPACE_UPDATE,
    AnyValue, Container, ContainerCreate, ContainerRef, ContainerUpdate, Descriptor, GCRequest, GCStats,
    Image, ImageCreate, ImageDelete, ImageRef, ImageUpdate, Lease, LeaseCreate, LeaseDelete, LeaseRef,
    LeaseResourceRequest, ListRequest, Namespace, NamespaceCreate, NamespaceName, NamespaceUpdate,
    ListPage, Resource, Route, Runtime, stem, subject,
)
