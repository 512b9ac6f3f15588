"""An async OCI distribution (registry v2) client: resolve, fetch and push manifests and blobs.

HTTP is blocking (urllib) and runs in threads; every byte fetched is checked against its
descriptor's digest and size, and an interrupted blob download resumes with ``Range``.
"""

from __future__ import annotations

import asyncio
import http.client
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from . import media
from .auth import Authorizer, Credentials, CredentialsFor
from .digest import Verifier, of, validate
from .errors import BadManifest, DigestMismatch, RegistryUnavailable, ShortRead
from .media import Descriptor
from .reference import Reference
from .transport import Transport

CHUNK = 4 << 20
MAX_MANIFEST = 8 << 20
UPLOAD_CHUNK = 8 << 20  # bytes per PATCH of a blob upload
Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[int], None]


@dataclass
class RegistryClient:
    """Talks to registries for one caller. ``credentials`` maps a host to its Credentials."""
    credentials: CredentialsFor | Credentials | None = None
    plain_http: bool | None = None
    timeout: float = 60.0
    resume_attempts: int = 5
    transport: Transport = field(init=False)

    def __post_init__(self) -> None:
        creds = self.credentials
        lookup: CredentialsFor = (creds if callable(creds) else (lambda host: creds))  # type: ignore[assignment]
        self.transport = Transport(Authorizer(lookup, self.timeout), self.plain_http, self.timeout)

    # ---- manifests
    async def resolve(self, ref: Reference) -> Descriptor:
        """The descriptor ``ref`` names (a manifest or an index)."""
        return await asyncio.to_thread(self._resolve, ref)

    def _resolve(self, ref: Reference) -> Descriptor:
        headers = {"Accept": media.ACCEPT}
        resp = self.transport.open("HEAD", ref, f"manifests/{ref.object}", headers=headers)
        with resp:
            digest = resp.headers.get("Docker-Content-Digest", "")
            mt = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
            size = resp.headers.get("Content-Length")
        if ref.digest:
            digest = ref.digest
        if not digest or size is None or mt in ("", "application/json", "text/plain"):
            data, mt2 = self._get_manifest(ref, ref.object)
            doc_mt = _doc_media_type(data)
            return Descriptor(doc_mt or mt2 or mt, ref.digest or of(data), len(data))
        validate(digest)
        return Descriptor(mt, digest, int(size))

    async def fetch_manifest(self, ref: Reference, desc: Descriptor) -> bytes:
        """The manifest or index ``desc`` describes, verified against its digest and size."""
        data, _ = await asyncio.to_thread(self._get_manifest, ref, desc.digest)
        v = Verifier(desc.digest)
        v.update(data)
        v.check(f"manifest {desc.digest} from {ref.name}")
        if desc.size and len(data) != desc.size:
            raise DigestMismatch(f"manifest {desc.digest}: size {len(data)} is not {desc.size}: failed precondition")
        return data

    def _get_manifest(self, ref: Reference, obj: str) -> tuple[bytes, str]:
        resp = self.transport.open("GET", ref, f"manifests/{obj}", headers={"Accept": media.ACCEPT})
        with resp:
            data = resp.read(MAX_MANIFEST + 1)
            mt = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if len(data) > MAX_MANIFEST:
            raise BadManifest(f"manifest {ref.name}@{obj} is larger than {MAX_MANIFEST} bytes: invalid argument")
        return data, mt

    async def push_manifest(self, ref: Reference, obj: str, media_type: str, data: bytes) -> str:
        """PUT a manifest or index under ``obj`` (a tag or its digest); returns its digest."""
        def put() -> str:
            resp = self.transport.open("PUT", ref, f"manifests/{obj}", data=data, push=True,
                                       headers={"Content-Type": media_type})
            with resp:
                return resp.headers.get("Docker-Content-Digest") or of(data)
        return await asyncio.to_thread(put)

    # ---- blobs
    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        def head() -> bool:
            resp = self.transport.open("HEAD", ref, f"blobs/{digest}", ok=(404,))
            with resp:
                return resp.status == 200
        return await asyncio.to_thread(head)

    async def fetch_blob(self, ref: Reference, desc: Descriptor, sink: Sink, *, offset: int = 0,
                         verifier: Verifier | None = None, progress: Progress | None = None,
                         verify: bool = True) -> None:
        """Stream the blob into ``sink`` from ``offset``; resume with Range when the stream breaks.

        From offset 0 (or with a ``verifier`` that has seen the first ``offset`` bytes) the digest
        is checked before the last byte is handed over, so a bad blob is never completed.
        ``verify=False``: the sink checks the digest itself (a content store does at commit),
        and hashing here too would only cost a second pass.
        """
        if verifier is None and offset == 0 and verify:
            verifier = Verifier(desc.digest)
        attempts = 0
        while offset < desc.size or desc.size == 0:
            resp = await asyncio.to_thread(self._open_blob, ref, desc.digest, offset)
            try:
                skip = offset if (offset and resp.status == 200) else 0
                got_any = False
                while True:
                    try:
                        # read and hash in a worker thread: sha256 releases the GIL on big buffers
                        chunk, skip = await asyncio.to_thread(self._read_chunk, resp, skip, verifier)
                    except (http.client.IncompleteRead, OSError, http.client.HTTPException):
                        break  # connection broke: resume from what we have
                    if chunk is None:
                        break
                    if offset + len(chunk) > desc.size:
                        raise DigestMismatch(f"blob {desc.digest} from {ref.name}: more than its "
                                             f"{desc.size} bytes: failed precondition")
                    got_any = got_any or bool(chunk)
                    if verifier is not None and offset + len(chunk) == desc.size:
                        verifier.check(f"blob {desc.digest} from {ref.name}")
                    if chunk:
                        await sink(chunk)
                        offset += len(chunk)
                        if progress is not None:
                            progress(offset)
            finally:
                await asyncio.to_thread(resp.close)
            if desc.size == 0:
                break
            if offset < desc.size:
                attempts = 0 if got_any else attempts + 1
                if attempts >= self.resume_attempts:
                    raise ShortRead(f"blob {desc.digest} from {ref.name}: ended at {offset} of "
                                    f"{desc.size} bytes: data loss")
        if desc.size == 0 and verifier is not None:
            verifier.check(f"blob {desc.digest} from {ref.name}")

    @staticmethod
    def _read_chunk(resp: http.client.HTTPResponse, skip: int, verifier: Verifier | None
                    ) -> tuple[bytes | None, int]:
        """One chunk (None at the end), minus what a server that ignored Range sent again."""
        chunk = resp.read(CHUNK)
        if not chunk:
            return None, skip
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        if verifier is not None and chunk:
            verifier.update(chunk)
        return chunk, skip

    def _open_blob(self, ref: Reference, digest: str, offset: int) -> http.client.HTTPResponse:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self.transport.open("GET", ref, f"blobs/{digest}", headers=headers)

    async def push_blob(self, ref: Reference, desc: Descriptor, chunks: AsyncIterator[bytes],
                        progress: Progress | None = None) -> bool:
        """Upload a blob (a PATCH per ``UPLOAD_CHUNK`` of ``chunks``, then PUT); False if the
        registry had it already."""
        if await self.blob_exists(ref, desc.digest):
            return False

        def start() -> str:
            resp = self.transport.open("POST", ref, "blobs/uploads/", push=True, data=b"")
            with resp:
                return self._location(ref, resp)
        location = await asyncio.to_thread(start)
        sent = 0
        async for chunk in _regroup(chunks, UPLOAD_CHUNK):
            def patch(data: bytes = chunk, first: int = sent, url: str = location) -> str:
                resp = self.transport.open("PATCH", ref, "", url=url, data=data, push=True, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{first}-{first + len(data) - 1}"})
                with resp:
                    return self._location(ref, resp)
            location = await asyncio.to_thread(patch)
            sent += len(chunk)
            if progress is not None:
                progress(sent)
        if sent != desc.size:
            raise ShortRead(f"blob {desc.digest}: read {sent} of {desc.size} bytes to push: data loss")

        def finish() -> None:
            sep = "&" if "?" in location else "?"
            url = f"{location}{sep}digest={urllib.parse.quote(desc.digest)}"
            resp = self.transport.open("PUT", ref, "", url=url, data=b"", push=True,
                                       headers={"Content-Type": "application/octet-stream"})
            resp.close()
        await asyncio.to_thread(finish)
        return True

    def _location(self, ref: Reference, resp: http.client.HTTPResponse) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryUnavailable(f"{ref.name}: upload answered without a Location: unavailable")
        if location.startswith("/"):
            base = self.transport.base(ref)
            scheme_host = base.split("/v2/", 1)[0]
            location = scheme_host + location
        return location


def _doc_media_type(data: bytes) -> str:
    import json
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    if doc.get("mediaType"):
        return str(doc["mediaType"])
    return media.OCI_INDEX if "manifests" in doc else (media.OCI_MANIFEST if "config" in doc else "")


async def _regroup(pieces: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """``pieces`` as chunks of at least ``size`` bytes (the last may be shorter): a request
    per piece would cost a round trip per 1 MiB that the content store hands out."""
    buf = bytearray()
    async for data in pieces:
        buf += data
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)
