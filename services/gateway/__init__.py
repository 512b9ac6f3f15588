"""The gateway: containerd's v1 gRPC API on a UNIX socket, forwarded over the bus.

The only process that imports grpc.
"""
