"""The metadata service: namespaces (and, later, images, containers, leases, GC)."""
