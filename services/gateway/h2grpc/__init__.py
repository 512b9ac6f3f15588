"""A gRPC server for the gateway: HTTP/2 framing in Python on the event loop (connection.py,
no I/O), calls and registration as grpc.aio's (server.py, context.py)."""

from .context import ServicerContext
from .server import Server

__all__ = ["Server", "ServicerContext"]
