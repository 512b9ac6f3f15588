"""Blocking HTTP to a registry (run it in a thread): URLs, auth retries, errors by status."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from .auth import Authorizer
from .errors import AuthFailed, Denied, InvalidArgument, RefNotFound, RegistryUnavailable
from .reference import Reference, is_loopback


class _NoRedirectOnWrite(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if req.get_method() not in ("GET", "HEAD"):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_NoRedirectOnWrite())


def _registry_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(65536) or b"{}")
        errors = body.get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, OSError, AttributeError):
        return ""


@dataclass
class Transport:
    authorizer: Authorizer = field(default_factory=Authorizer)
    plain_http: bool | None = None      # None: plain HTTP for loopback hosts only
    timeout: float = 60.0

    def base(self, ref: Reference) -> str:
        plain = self.plain_http if self.plain_http is not None else is_loopback(ref.host)
        return f"{'http' if plain else 'https'}://{ref.api_host}/v2/{ref.repository}"

    def open(self, method: str, ref: Reference, path: str, *, headers: dict[str, str] | None = None,
             data: bytes | None = None, push: bool = False, url: str | None = None,
             ok: tuple[int, ...] = ()) -> http.client.HTTPResponse:
        """One request with auth retries; raises the matching distribution error on failure."""
        scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        target = url or f"{self.base(ref)}/{path}"
        for _ in range(3):
            req = urllib.request.Request(target, data=data, method=method, headers=dict(headers or {}))
            auth = self.authorizer.header(ref.host, scope)
            if auth:
                req.add_unredirected_header("Authorization", auth)
            try:
                return _opener.open(req, timeout=self.timeout)  # type: ignore[no-any-return]
            except urllib.error.HTTPError as exc:
                if exc.code in ok:
                    return exc  # type: ignore[return-value]
                if exc.code == 401:
                    self.authorizer.answer(ref.host, scope, exc.headers.get("WWW-Authenticate", ""))
                    continue
                raise self._error(exc, method, ref, path) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                raise RegistryUnavailable(f"{method} {target}: {reason}: unavailable") from None
        raise AuthFailed(f"{ref.host}: authorization failed: unauthenticated")

    @staticmethod
    def _error(exc: urllib.error.HTTPError, method: str, ref: Reference, path: str) -> Exception:
        detail = _registry_message(exc)
        what = f"{ref.name}/{path}" if path else str(ref)
        text = f"{method} {what}: {exc.code} {exc.reason}" + (f" ({detail})" if detail else "")
        if exc.code == 404:
            return RefNotFound(f"{text}: not found")
        if exc.code == 403:
            return Denied(f"{text}: permission denied")
        if exc.code in (400, 405, 413, 416):
            return InvalidArgument(f"{text}: invalid argument")
        return RegistryUnavailable(f"{text}: unavailable")
