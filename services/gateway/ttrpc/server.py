"""A ttrpc server on an asyncio UNIX socket: ServerConnection (protocol.py) per connection,
each request served in a task of its own (ttrpc's requests on one connection run
concurrently and may be answered out of order), unary methods only (ttrpc v1.1 has no
streams).

A method takes the request's payload and a context with grpc.aio's interface
(h2grpc.ServicerContext: metadata, deadline, ``abort``), so the gRPC servicers' own
methods serve ttrpc unchanged (``unary_method``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from ..h2grpc import ServicerContext
from ..listener import bind
from ..opening import Opening, OpeningFailed
from .protocol import MAX_MESSAGE, RequestReceived, RequestRefused, Response, ServerConnection, Status

log = logging.getLogger("flotilla.gateway.ttrpc")
Method = Callable[[bytes, ServicerContext], Awaitable[bytes]]
PeerCheck = Callable[[int, int], bool]  # (uid, gid) of the connecting process -> admitted

_UNKNOWN, _DEADLINE, _UNIMPLEMENTED, _UNAVAILABLE = 2, 4, 12, 14
# ttrpc's namespace header; the gRPC servicers read the gRPC one (rpc.namespace), and
# containerd's namespaces.Namespace() falls back from one to the other the same way
_TTRPC_NAMESPACE, _GRPC_NAMESPACE = "containerd-namespace-ttrpc", "containerd-namespace"
_MAX_ACTIVE = 256  # requests in progress on one connection before we stop reading it
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def same_user(uid: int, gid: int) -> bool:
    """containerd's ttrpc server admits only its own uid and gid
    (ttrpc.UnixSocketRequireSameUser): the socket's mode 0660 also lets in the group's
    other users, this does not. Credentials are the connecting process's (SO_PEERCRED)."""
    return uid == os.geteuid() and gid == os.getegid()


def unary_method(handler: Callable[[Any, Any], Awaitable[Message]], request_type: type[Message]) -> Method:
    """A gRPC servicer's unary method as a ttrpc method: same request and reply messages."""
    async def call(payload: bytes, context: ServicerContext) -> bytes:
        try:
            request = request_type.FromString(payload)
        except DecodeError as exc:  # ttrpc's own text for a payload that does not decode
            await context.abort(grpc.StatusCode.INTERNAL, f"ttrpc: error unmarshalling payload: {exc}")
        reply = await handler(request, context)
        return reply.SerializeToString()
    return call


class _Connection(asyncio.Protocol):
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.proto = ServerConnection(server.max_message)
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.write_paused = self.read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        creds = self._peer()
        if creds is None or not self.server.peer_check(*creds):
            log.warning("ttrpc: refusing connection from uid/gid %s", creds)
            self.closed = True
            transport.close()
            return
        self.server.connections.add(self)

    def _peer(self) -> tuple[int, int] | None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        try:
            _pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        except (OSError, AttributeError, struct.error):
            return None
        return uid, gid

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for task in self.tasks:  # nobody is left to answer: as ttrpc cancels its calls' context
            task.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._flow()

    def _flow(self) -> None:
        """Stop reading requests while the client does not read its answers or too many are
        in progress: ttrpc has no flow control, so this is what bounds a connection's memory."""
        if self.closed or self.transport is None:
            return
        want_paused = self.write_paused or len(self.tasks) >= _MAX_ACTIVE
        if want_paused != self.read_paused:
            self.read_paused = want_paused
            (self.transport.pause_reading if want_paused else self.transport.resume_reading)()

    def data_received(self, data: bytes) -> None:
        for ev in self.proto.receive(data):
            if isinstance(ev, RequestRefused):
                self._answer(ev.stream_id, Response(ev.status))
            elif isinstance(ev, RequestReceived):
                task = asyncio.create_task(self._serve(ev))
                self.tasks.add(task)
                task.add_done_callback(self._done)
        self._flow()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._flow()

    def _answer(self, stream_id: int, response: Response) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        self.proto.respond(stream_id, response)
        self.transport.write(self.proto.data_to_send())

    async def _serve(self, ev: RequestReceived) -> None:
        req = ev.request
        when: float | None = None
        if req.timeout_nano:  # negative: the client's deadline passed before it sent the request
            when = asyncio.get_running_loop().time() + max(0.0, req.timeout_nano / 1e9)
        opening = self.server.opening
        if opening is not None and opening.pending:  # held until the services are registered
            try:
                async with asyncio.timeout_at(when):
                    await opening.wait()
            except OpeningFailed as exc:
                self._answer(ev.stream_id, Response(Status(_UNAVAILABLE, str(exc))))
                return
            except TimeoutError:
                self._answer(ev.stream_id, Response(Status(_DEADLINE, "context deadline exceeded")))
                return
        method = self.server.method(req.service, req.method)
        if isinstance(method, Status):
            self._answer(ev.stream_id, Response(method))
            return
        metadata = [(k, v) for k, v in req.metadata if k]  # an empty key is nobody's metadata
        ns = [v for k, v in metadata if k == _TTRPC_NAMESPACE]
        if ns and not any(k == _GRPC_NAMESPACE for k, _ in metadata):
            metadata.append((_GRPC_NAMESPACE, ns[0]))
        ctx = ServicerContext(metadata)
        ctx.deadline = when
        deadline = asyncio.timeout_at(when)
        try:
            async with deadline:
                payload = await method(req.payload, ctx)
            response = Response(Status(), payload)
        except aio.AbortError:
            response = Response(Status(ctx.code.value[0], ctx.details))
        except TimeoutError as exc:
            if not deadline.expired():  # not ours: a plain error
                log.exception("ttrpc %s/%s failed", req.service, req.method)
                response = Response(Status(_UNKNOWN, str(exc) or "timeout"))
            else:  # Go's context error, as containerd's handlers return it
                response = Response(Status(_DEADLINE, "context deadline exceeded"))
        except asyncio.CancelledError:
            return  # the connection is gone, or the server stopping: no one to answer
        except Exception as exc:  # a plain error: ttrpc answers it as Unknown with its text
            log.exception("ttrpc %s/%s failed", req.service, req.method)
            response = Response(Status(_UNKNOWN, str(exc)))
        self._answer(ev.stream_id, response)


class Server:
    """Services registered by name, served on one UNIX socket."""

    def __init__(self, max_message: int = MAX_MESSAGE, peer_check: PeerCheck = same_user,
                 opening: Opening | None = None) -> None:
        self.max_message = max_message
        self.peer_check = peer_check
        self.opening = opening  # while pending, calls wait for the services to be registered
        self._services: dict[str, dict[str, Method]] = {}
        self._listener: asyncio.AbstractServer | None = None
        self._path: Path | None = None
        self._inode: tuple[int, int] | None = None  # the socket file we made: (st_dev, st_ino)
        self.connections: set[_Connection] = set()

    def register(self, service: str, methods: dict[str, Method]) -> None:
        if service in self._services:
            raise ValueError(f"duplicate service {service} registered")
        self._services[service] = dict(methods)

    def method(self, service: str, name: str) -> Method | Status:
        """The method, or the Unimplemented status ttrpc's server answers with."""
        methods = self._services.get(service)
        if methods is None:
            return Status(_UNIMPLEMENTED, f"service {service}")
        method = methods.get(name)
        if method is None:
            return Status(_UNIMPLEMENTED, f"method {name}")
        return method

    def protocol(self) -> asyncio.Protocol:
        """A connection of this server, for a listener that is not the server's own."""
        return _Connection(self)

    async def start(self, path: str | Path, mode: int = 0o660) -> None:
        """Listen on ``path``, replacing a socket left there by a killed gateway (never a
        file of another kind). The mode is set between bind and listen, so no client can
        connect while the socket still has the umask's mode."""
        path = Path(path)
        sock = bind(path, mode, backlog=128)
        try:
            sock.setblocking(False)
            self._listener = await asyncio.get_running_loop().create_unix_server(lambda: _Connection(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        st = path.lstat()
        self._path, self._inode = path, (st.st_dev, st.st_ino)

    async def stop(self, grace: float | None = None) -> None:
        """Take no more connections; give requests in progress ``grace`` seconds; close every
        connection; remove the socket if it is still ours."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        tasks = [t for conn in self.connections for t in conn.tasks]
        if tasks and grace:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
            conn.connection_lost(None)
        if self._path is not None:
            self._unlink()

    def _unlink(self) -> None:
        """Remove our socket file, not one a newer gateway may already have put there."""
        assert self._path is not None
        try:
            st = self._path.lstat()
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._inode:
                self._path.unlink()
        except OSError:
            pass
        self._path = self._inode = None
