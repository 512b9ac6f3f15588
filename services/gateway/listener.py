"""The gateway's one listening socket, shared by its instances and outliving each of them.

Under ``flotilla up`` supervisord creates the socket and hands it to every gateway process
as a file descriptor (deploy/holder.py keeps it open between processes), so connections
made while a gateway restarts wait in the backlog instead of being refused. The ttrpc path
``<socket>.ttrpc`` is a hard link to the same socket, and each connection is given to the
gRPC or the ttrpc server by its first bytes: an HTTP/2 client always opens with ``PRI *``,
which as a ttrpc frame header would announce a message of over a gigabyte.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("flotilla.gateway")

_H2_PREFACE = b"PRI "
ProtocolFactory = Callable[[], asyncio.Protocol]


def inherited(env: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket a supervisor passed down (``FLOTILLA_SOCKET_FD``), if any. Its
    descriptor is moved off the standard stream it came on (supervisord uses stdin)."""
    fd = (env if env is not None else os.environ).get("FLOTILLA_SOCKET_FD", "")
    if not fd.isdigit():
        return None
    sock = socket.socket(fileno=os.dup(int(fd)))
    if sock.family != socket.AF_UNIX or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
        sock.detach()
        raise RuntimeError(f"FLOTILLA_SOCKET_FD={fd} is not a listening UNIX socket")
    if int(fd) <= 2:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, int(fd))
        os.close(devnull)
    else:
        os.close(int(fd))
    return sock


def bind(path: str | Path, mode: int = 0o660, backlog: int = 1024) -> socket.socket:
    """Our own listening socket, for a gateway run alone: a socket left by a killed gateway
    is replaced, never a file of another kind. The mode is set before listen(), so no
    client connects while it still has the umask's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def link(target: str | Path, alias: str | Path) -> None:
    """Make ``alias`` another name of the socket at ``target`` (atomically replacing what
    was there: a stale socket, or an older link)."""
    target, alias = Path(target), Path(alias)
    if alias.exists() and os.path.samefile(alias, target):
        return
    if alias.exists() and not alias.is_socket():
        raise FileExistsError(f"{alias} exists and is not a socket")
    temp = alias.with_name(f".{alias.name}.{os.getpid()}")
    temp.unlink(missing_ok=True)
    os.link(target, temp)
    os.replace(temp, alias)


class _FirstBytes(asyncio.Protocol):
    """Reads a connection's first bytes, then hands it to the protocol they name."""

    def __init__(self, h2: ProtocolFactory, ttrpc: ProtocolFactory, waiting: set["_FirstBytes"]) -> None:
        self.h2, self.ttrpc, self.waiting = h2, ttrpc, waiting
        self.transport: asyncio.Transport | None = None
        self.seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.waiting.add(self)

    def data_received(self, data: bytes) -> None:
        self.seen += data
        if len(self.seen) < len(_H2_PREFACE) and _H2_PREFACE.startswith(self.seen):
            return  # too few bytes to tell yet
        assert self.transport is not None
        self.waiting.discard(self)
        proto = (self.h2 if self.seen.startswith(_H2_PREFACE) else self.ttrpc)()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(self.seen)

    def eof_received(self) -> bool | None:
        return None  # closed before saying anything: nothing to hand over

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.discard(self)


class Accepting:
    """Connections being taken on ``sock`` (ours or shared with other gateways)."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.waiting: set[_FirstBytes] = set()  # accepted, their client's first bytes not yet read

    async def close(self, grace: float = 2.0) -> None:
        """Take no more connections. Those accepted whose client has not spoken yet are
        given ``grace`` seconds to: then they go to their server, which sends a stopping
        gateway's GOAWAY, and their client goes to another gateway; closed unanswered,
        a gRPC client fails its call ("timed out waiting for server handshake")."""
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.waiting and loop.time() < deadline:
            await asyncio.sleep(0.01)


async def serve(sock: socket.socket, h2: ProtocolFactory, ttrpc: ProtocolFactory) -> Accepting:
    """Accept on ``sock`` for both protocols."""
    sock.setblocking(False)
    accepting = Accepting()
    accepting.server = await asyncio.get_running_loop().create_unix_server(
        lambda: _FirstBytes(h2, ttrpc, accepting.waiting), sock=sock)
    return accepting
