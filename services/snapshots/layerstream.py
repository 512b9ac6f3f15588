"""A layer blob as a stream of its uncompressed tar: the compression found by its first
bytes (gzip by ISA-L where installed, zstd, or none), inflated and hashed on a thread of its
own while the applier (applier.py) writes the files.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from typing import BinaryIO

try:  # ISA-L inflates gzip layers 1.5-2x faster than zlib (docs/snapshots.md)
    from isal.isal_zlib import decompressobj as _gunzip
    from isal.isal_zlib import error as _GzipError
except ImportError:  # pragma: no cover - an install without it still unpacks, slower
    from zlib import decompressobj as _gunzip  # type: ignore[assignment]
    from zlib import error as _GzipError  # type: ignore[assignment]

CHUNK = 1 << 20
_PIECE = 256 << 10  # uncompressed bytes per piece handed from the decompressing thread
_AHEAD = 8          # pieces it may run ahead of the files being written

MEDIA_TYPES = {
    # media type -> declared compression ("" = none, "unknown" = detect)
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "unknown",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar": "unknown",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}


class LayerError(Exception):
    """A layer that cannot be applied (malformed, or refused as hostile)."""


# -- decompression and digest ----------------------------------------------------------

class Decompressed:
    """A file-like reader of the uncompressed stream that hashes and counts what it yields.

    A thread of its own reads, decompresses and hashes (all three leave the GIL) while the
    caller writes the files: the 1 MiB busybox layer applied in 13.5 ms instead of 15.8 here.
    ``close`` stops it; the hash and size are final once ``read`` has returned b"".
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        head = raw.read(4)
        self.buf = b""
        self.pos = 0
        self.hash = hashlib.sha256()
        self.size = 0
        if head[:2] == b"\x1f\x8b":
            self._inner: Iterator[bytes] = self._gzip(head)
        elif head == b"\x28\xb5\x2f\xfd":
            self._inner = self._zstd(head)
        else:
            self._inner = self._plain(head)
        self._pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(_AHEAD)
        self._stopping = False
        self._ended = False
        self._producer = threading.Thread(target=self._produce, name="layer-decompress", daemon=True)
        self._producer.start()

    def _produce(self) -> None:
        try:
            for piece in self._inner:
                if self._stopping:
                    return
                self.hash.update(piece)
                self.size += len(piece)
                self._pieces.put(piece)
            self._pieces.put(None)
        except _GzipError as exc:
            self._pieces.put(LayerError(f"gzip: {exc}"))
        except BaseException as exc:  # handed to the reader, raised there
            self._pieces.put(exc)

    def close(self) -> None:
        """Stop the decompressing thread and wait for it (it reads ``raw``)."""
        self._stopping = True
        while self._producer.is_alive():
            try:  # make room for a piece it is putting
                self._pieces.get(timeout=0.05)
            except queue.Empty:
                pass
        self._producer.join()

    def __enter__(self) -> "Decompressed":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _plain(self, head: bytes) -> Iterator[bytes]:
        yield head
        while chunk := self.raw.read(CHUNK):
            yield chunk

    def _gzip(self, head: bytes) -> Iterator[bytes]:
        d = _gunzip(wbits=31)
        data = head
        while True:
            out = d.decompress(data, _PIECE)  # at most _PIECE: memory stays bounded whatever the ratio
            if out:
                yield out
            data = d.unconsumed_tail
            if data or len(out) == _PIECE:
                continue  # input left, or output still pending
            if d.eof and d.unused_data:  # concatenated gzip members
                data = d.unused_data
                d = _gunzip(wbits=31)
                continue
            data = self.raw.read(CHUNK)
            if not data:
                if not d.eof:
                    raise LayerError("unexpected EOF in gzip stream")
                return

    def _zstd(self, head: bytes) -> Iterator[bytes]:
        import zstandard

        class _Prefixed:
            def __init__(self, first: bytes, raw: BinaryIO) -> None:
                self.first, self.raw = first, raw

            def read(self, n: int = -1) -> bytes:
                if self.first:
                    out, self.first = self.first, b""
                    return out
                return self.raw.read(n)

        reader = zstandard.ZstdDecompressor().stream_reader(_Prefixed(head, self.raw), read_across_frames=True)
        while chunk := reader.read(CHUNK):
            yield chunk

    def _next(self) -> bytes:
        if self._ended:
            return b""
        piece = self._pieces.get()
        if piece is None:
            self._ended = True
            return b""
        if isinstance(piece, BaseException):
            self._ended = True
            raise piece
        return piece

    def read(self, n: int = -1) -> bytes:
        # tarfile asks for small pieces: serve them from the current chunk by position
        # (re-slicing one growing buffer would copy it over and over)
        avail = len(self.buf) - self.pos
        if 0 <= n <= avail:
            out = self.buf[self.pos:self.pos + n]
            self.pos += n
            return out
        parts = [self.buf[self.pos:]]
        have = avail
        self.buf, self.pos = b"", 0
        while n < 0 or have < n:
            chunk = self._next()
            if not chunk:
                return b"".join(parts)
            if n >= 0 and have + len(chunk) > n:
                take = n - have
                parts.append(chunk[:take])
                self.buf, self.pos = chunk, take
                return b"".join(parts)
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass
