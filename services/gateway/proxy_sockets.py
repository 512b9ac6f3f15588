"""The consumers' sockets (services/gateway/proxy.py), one listening socket per consumer
shared by every gateway instance.

``<state>/proxy/<name>.sock`` is bound once, by the first instance; each instance that
starts later receives that very socket from a live one (SCM_RIGHTS over the sibling's
``.<id>.<pid>.handoff`` socket, ``<id>`` short for the name: a socket's path is short) and
accepts on it too. So a stopping or SIGKILLed instance
takes only its own connections with it: the socket stays open and accepting while any
instance lives, and containerd's client reconnects at once (a path that led to a closed
socket would be refused, and grpc-go fails calls for its whole reconnect back-off, 1-3 s).
Only when no instance is left does the next one bind the path anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from flotilla.libs.bus import Bus
from flotilla.libs.config import Config

from . import h2grpc, listener, proxy

log = logging.getLogger("flotilla.gateway.proxy")
HANDOFF_TIMEOUT = 2.0  # seconds a starting instance waits for a sibling to pass the socket
# Python 3.13 unlinks a UNIX server's path when the server closes: never the shared one
_KEEP_PATH = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return pid > 0


def _pid_of(handoff: Path) -> int:
    tail = handoff.name.removesuffix(".handoff").rpartition(".")[2]
    return int(tail) if tail.isdigit() else 0


def _stem(public: Path) -> str:
    return hashlib.sha256(public.name.encode()).hexdigest()[:12]


def handoffs(public: Path) -> list[Path]:
    """The handoff sockets of the instances serving ``public`` (and of dead ones)."""
    return list(public.parent.glob(f".{_stem(public)}.*.handoff"))


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Instances starting at once decide one after the other who binds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ConsumerSocket:
    """One consumer's listening socket, as this gateway instance serves it."""

    def __init__(self, public: Path, server: h2grpc.Server) -> None:
        self.public, self.server = public, server
        self.stem = _stem(public)
        self.handoff = public.with_name(f".{self.stem}.{os.getpid()}.handoff")
        self.sock: socket.socket | None = None
        self._accepting: asyncio.AbstractServer | None = None
        self._giving: asyncio.Task[None] | None = None
        self._handoff_sock: socket.socket | None = None

    def _siblings(self) -> list[Path]:
        return [p for p in handoffs(self.public) if p != self.handoff]

    def _from_sibling(self) -> socket.socket | None:
        """The consumer's socket, from a live instance that serves it."""
        for path in self._siblings():
            if not _alive(_pid_of(path)):
                path.unlink(missing_ok=True)  # left by an instance that died
                continue
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ask:
                ask.settimeout(HANDOFF_TIMEOUT)
                ask.connect(str(path))
                _, fds, _, _ = socket.recv_fds(ask, 16, 1)
                if fds:
                    got = socket.socket(fileno=fds[0])
                    if got.getsockname() == str(self.public) and os.path.exists(self.public):
                        return got
                    got.close()
            log.warning("%s did not pass %s", path, self.public)
        return None

    def _take(self) -> tuple[socket.socket, socket.socket]:
        """Under the consumer's lock: its socket (a sibling's, or bound here) and our own
        handoff socket, made before the lock goes so the next instance finds us."""
        with _exclusive(self.public.with_name(f".{self.stem}.lock")):
            sock = self._from_sibling() or listener.bind(self.public)
            self.handoff.unlink(missing_ok=True)
            give = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            give.bind(str(self.handoff))
            os.chmod(self.handoff, 0o600)
            give.listen(16)
            return sock, give

    async def start(self) -> None:
        self.sock, give = await asyncio.to_thread(self._take)
        self._handoff_sock = give
        self.sock.setblocking(False)
        give.setblocking(False)
        self._accepting = await asyncio.get_running_loop().create_unix_server(
            self.server.protocol, sock=self.sock, **_KEEP_PATH)
        self._giving = asyncio.create_task(self._give(give))

    async def _give(self, give: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(give)
            with conn:
                if self.sock is not None:
                    with contextlib.suppress(OSError):
                        socket.send_fds(conn, [b"s"], [self.sock.fileno()])

    async def stop(self, grace: float) -> None:
        if self._giving is not None:
            self._giving.cancel()
        if self._handoff_sock is not None:
            self._handoff_sock.close()
        self.handoff.unlink(missing_ok=True)
        if self._accepting is not None:
            self._accepting.close()  # closes our descriptor only: the siblings accept on
        await self.server.stop(grace)  # GOAWAY: our clients reconnect to a sibling


class ProxyPlugins:
    """Every consumer's socket, as this gateway instance serves them."""

    def __init__(self, sockets: list[ConsumerSocket], adopter: proxy.Adopter | None) -> None:
        self.sockets, self.adopter = sockets, adopter

    async def start(self) -> None:
        for s in self.sockets:
            await s.start()
            log.info("serving containerd's Content and Snapshots APIs to proxy plugins on %s", s.public)

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(s.stop(grace) for s in self.sockets))
        if self.adopter is not None:
            await self.adopter.drain(min(grace, 5.0))


async def serve(gateway: object, bus: Bus, cfg: Config, max_message: int) -> Callable[[float], Awaitable[None]]:
    """Serve the configured consumers' sockets beside the gateway's own; returns the stop."""
    wanted = proxy.settings(cfg)
    if not wanted.consumers:
        return ProxyPlugins([], None).stop
    if not isinstance(gateway, h2grpc.Server):  # grpcio's server offers no handler lookup
        log.warning("proxy plugins are served with the gateway's own gRPC server only: none served")
        return ProxyPlugins([], None).stop
    (cfg.state / "proxy").mkdir(mode=0o700, parents=True, exist_ok=True)
    adopter = proxy.adopter(bus, cfg)
    lookup = proxy.gateway_lookup(gateway)
    plugins = ProxyPlugins([ConsumerSocket(c.socket, proxy.server_for(lookup, c, wanted.snapshotters, adopter,
                                                                      max_message))
                            for c in wanted.consumers], adopter)
    await plugins.start()
    return plugins.stop
