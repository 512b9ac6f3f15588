"""A tiny registry on 127.0.0.1 (http.server) that answers what a test tells it to: good images,
garbage manifests, blobs with wrong bytes, truncated or interrupted blobs, and token auth."""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flotilla.testing.images import Image


@dataclass
class Blob:
    data: bytes
    media_type: str = "application/octet-stream"
    send: bytes | None = None           # bytes served instead of data (digest mismatch)
    truncate: int | None = None         # serve only this many bytes (and say so in Content-Length)
    cut_after: int | None = None        # first GET: promise all, send this many, drop the connection
    slow: bool = False                  # send in small pieces with pauses (to interrupt a pull midway)


@dataclass
class FakeRegistry:
    manifests: dict[str, Blob] = field(default_factory=dict)   # "repo/tag-or-digest" -> blob
    blobs: dict[str, Blob] = field(default_factory=dict)       # digest -> blob
    token_auth: tuple[str, str] | None = None                  # (user, password) for the token server
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def add_image(self, repo: str, tag: str, image: Image) -> None:
        for b in image.blobs():
            if b.media_type.endswith("manifest.v1+json") or b.media_type.endswith("index.v1+json"):
                self.manifests[f"{repo}/{b.digest}"] = Blob(b.data, b.media_type)
            else:
                self.blobs[b.digest] = Blob(b.data, b.media_type)
        self.manifests[f"{repo}/{tag}"] = Blob(image.top.data, image.top.media_type)

    def start(self) -> "FakeRegistry":
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _authorized(self) -> bool:
                if registry.token_auth is None:
                    return True
                if self.path.startswith("/token"):
                    return True
                if self.headers.get("Authorization") == "Bearer good-token":
                    return True
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Bearer realm="http://{registry.host}/token",'
                                                     f'service="fake",scope="repository:x:pull"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                registry.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}".strip())
                if not self._authorized():
                    return
                if self.path.startswith("/token"):
                    user, pw = registry.token_auth or ("", "")
                    want = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
                    if self.headers.get("Authorization") != want:
                        return self._plain(401, b'{"details":"bad credentials"}')
                    return self._plain(200, b'{"token":"good-token"}')
                m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/?]+)$", self.path)
                if not m:
                    return self._plain(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}')
                repo, kind, obj = m.groups()
                blob = registry.manifests.get(f"{repo}/{obj}") if kind == "manifests" else registry.blobs.get(obj)
                if blob is None and kind == "manifests":  # by the digest of what a tag serves now
                    import hashlib
                    blob = next((b for k, b in registry.manifests.items() if k.startswith(repo + "/")
                                 and "sha256:" + hashlib.sha256(b.data).hexdigest() == obj), None)
                if blob is None:
                    return self._plain(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}')
                data = blob.send if blob.send is not None else blob.data
                start = 0
                rng = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if rng and kind == "blobs" and blob.truncate is None:
                    start = int(rng.group(1))
                if blob.truncate is not None:
                    data = data[:blob.truncate]
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", blob.media_type)
                if kind == "manifests":
                    import hashlib
                    self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(blob.data).hexdigest())
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if blob.cut_after is not None and not start:
                    cut, blob.cut_after = blob.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    import socket
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if blob.slow:
                    import time
                    for i in range(0, len(body), 256 << 10):
                        self.wfile.write(body[i:i + (256 << 10)])
                        time.sleep(0.02)
                    return
                self.wfile.write(body)

            def _plain(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> "FakeRegistry":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
