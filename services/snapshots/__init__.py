"""The snapshots and diff service: layer snapshots (overlayfs, native), their mounts, and
safe application and computation of layers."""
