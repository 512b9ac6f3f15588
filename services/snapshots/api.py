"""The snapshots service's subjects and message schemas.

The contract itself lives in ``flotilla.libs.api.snapshots`` so the gateway, the runtime and
the metadata service's garbage collector can use it without importing this service.
"""

from flotilla.libs.api.snapshots import *  # noqa: F401,F403
from flotilla.libs.api.snapshots import (  # noqa: F401  (named for type checkers)
    APPLY, APPLY_AHEAD, CLEANUP, COMMIT, DIFF, LIST, MOUNTS, NAMESPACE_HELD, PREPARE, REMOVE, STAT, UPDATE,
    USAGE, VIEW, AheadRequest, ApplyRequest, CommitRequest, Descriptor, DiffRequest, Info, KeyRequest,
    ListRequest, Mount, NamespaceRequest, PrepareRequest, SnapshotterRequest, UpdateRequest,
    Usage, stem, subject,
)
