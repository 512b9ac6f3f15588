"""Copies between a farm's hosts over a plain TCP socket: the bytes go by ``sendfile`` from
one host's blob file, and are hashed into a file on the other (docs/farm.md).

The bus (authenticated, TLS between hosts) carries the ask: a host that wants a copy asks
the holder for a ticket (``copy.open``), a token good once, for one blob, for a short while;
the socket carries the token, then the bytes. The receiver keeps them only if they match
the digest. NATS moves a few hundred MB/s here; this, several times that.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flotilla.libs.errors import DataLoss, Unavailable

log = logging.getLogger("flotilla.content.bulk")
TICKET_TTL = 30.0     # seconds a ticket may wait for its connection
IO_TIMEOUT = 30.0     # seconds a socket may stall
BUFFER = 4 << 20


class BulkServer:
    """Serves this host's copies to holders of a ticket, a thread per connection."""

    def __init__(self, listen: str, path_of: Callable[[str], Path | None]) -> None:
        host, _, port = listen.rpartition(":")
        self.address = listen
        self.path_of = path_of  # digest -> this host's right copy, or None
        self.tickets: dict[str, tuple[str, float]] = {}  # token -> (digest, expiry)
        self.lock = threading.Lock()
        self.sock = socket.create_server((host, int(port)), reuse_port=False, backlog=64)
        self.thread = threading.Thread(target=self._accept, name="content-bulk", daemon=True)
        self.thread.start()

    def ticket(self, digest: str) -> str:
        token = secrets.token_hex(16)
        now = time.monotonic()
        with self.lock:
            self.tickets = {t: v for t, v in self.tickets.items() if v[1] > now}
            self.tickets[token] = (digest, now + TICKET_TTL)
        return token

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), name="content-bulk-send", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT)
            try:
                line = conn.makefile("rb").readline(200).decode().split()
                token, offset = line[0], int(line[1])
                with self.lock:
                    digest, expiry = self.tickets.pop(token, ("", 0.0))
                path = self.path_of(digest) if expiry > time.monotonic() else None
                if path is None:
                    return  # no bytes: the receiver sees a short copy
                with open(path, "rb") as f:
                    conn.sendfile(f, offset)  # os.sendfile, waiting for the socket as its timeout allows
            except (OSError, ValueError, IndexError) as exc:
                log.info("a copy's connection ended: %s", exc)


def receive(address: str, token: str, digest: str, size: int, into: Path) -> None:
    """The blob's bytes from a holder's BulkServer into ``into``, verified (blocking)."""
    host, _, port = address.rpartition(":")
    h = hashlib.new(digest.split(":", 1)[0])
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    got = 0
    try:
        with socket.create_connection((host, int(port)), timeout=IO_TIMEOUT) as sock, open(into, "wb") as out:
            sock.sendall(f"{token} 0\n".encode())
            while got < size:
                n = sock.recv_into(buf)
                if not n:
                    break
                h.update(view[:n])
                out.write(view[:n])
                got += n
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise Unavailable(f"copy of {digest} from {address}: {exc}: unavailable") from None
    if got != size or f"{h.name}:{h.hexdigest()}" != digest:
        wrong = f"{got} of {size} bytes" if got != size else "its digest does not match"
        raise DataLoss(f"copy of {digest} from {address}: {wrong}: data loss")
