"""Registry authentication: HTTP basic and the Docker token flow (``WWW-Authenticate: Bearer``)."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import AuthFailed, RegistryUnavailable

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    @staticmethod
    def parse(text: str) -> "Credentials":
        """``user:password`` as ctr's ``--user`` takes it."""
        user, _, password = text.partition(":")
        return Credentials(user, password)


CredentialsFor = Callable[[str], "Credentials | None"]


@dataclass
class Challenge:
    scheme: str                      # "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str) -> Challenge | None:
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    return Challenge(scheme.lower(), {m[0].lower(): m[1] or m[2] for m in _PARAM.findall(rest)})


def basic_header(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


@dataclass
class Authorizer:
    """Holds what a host asked for and the header that answers it; safe across threads."""
    credentials: CredentialsFor = lambda host: None
    timeout: float = 30.0
    _headers: dict[tuple[str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def header(self, host: str, scope: str) -> str | None:
        with self._lock:
            return self._headers.get((host, scope))

    def answer(self, host: str, scope: str, www_authenticate: str) -> str:
        """Work out the Authorization header for a 401 from ``host``; raise AuthFailed if we cannot."""
        challenge = parse_challenge(www_authenticate)
        creds = self.credentials(host)
        if challenge is None:
            raise AuthFailed(f"{host}: 401 Unauthorized without a WWW-Authenticate challenge")
        if challenge.scheme == "basic":
            if creds is None:
                raise AuthFailed(f"pull access to {host} requires credentials (basic auth, realm "
                                 f"{challenge.params.get('realm', '?')!r}): none given: unauthenticated")
            value = basic_header(creds)
        elif challenge.scheme == "bearer":
            value = "Bearer " + self._token(host, challenge, scope, creds)
        else:
            raise AuthFailed(f"{host}: unsupported authentication scheme {challenge.scheme!r}")
        with self._lock:
            previous = self._headers.get((host, scope))
            self._headers[(host, scope)] = value
        if previous == value:
            who = f"user {creds.username!r}" if creds else "anonymous access"
            raise AuthFailed(f"{host}: authorization failed for {who}: unauthenticated")
        return value

    def _token(self, host: str, challenge: Challenge, scope: str, creds: Credentials | None) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthFailed(f"{host}: bearer challenge without a realm")
        query = {k: v for k, v in (("service", challenge.params.get("service", "")),
                                   ("scope", scope or challenge.params.get("scope", ""))) if v}
        import urllib.error
        import urllib.parse
        import urllib.request  # only registries with token auth need it (costs ~50 ms to load)

        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        req = urllib.request.Request(url)
        if creds is not None:
            req.add_unredirected_header("Authorization", basic_header(creds))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise AuthFailed(f"{host}: token server {realm} refused "
                                 f"{'user ' + repr(creds.username) if creds else 'anonymous access'}: "
                                 f"{exc.code} {exc.reason}") from None
            raise RegistryUnavailable(f"{host}: token server {realm}: {exc.code} {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise RegistryUnavailable(f"{host}: token server {realm}: {exc}") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise AuthFailed(f"{host}: token server {realm} answered without a token")
        return str(token)
