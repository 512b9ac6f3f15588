"""The subject scheme (see docs/subjects.md).

``<prefix>.<service>.<method>`` for shared services (content, metadata), and the same
methods of one host's instances on ``<prefix>.<service>.h.<host>.<method>``;
``<prefix>.<service>.<host>.<method>`` for host-local ones (snapshots, runtime);
``<prefix>.events`` carries every event; ``<prefix>.hello`` says an instance (re)started.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def token(value: str) -> str:
    """A safe single subject token (NATS forbids '.', '*', '>' and spaces in one)."""
    return _TOKEN.sub("_", value) or "_"


def stem(prefix: str, service: str, host: str | None = None) -> str:
    """The first tokens of every subject of a service: ``<prefix>.<service>``, then the
    host's token for a host-local one."""
    return f"{prefix}.{service}" if host is None else f"{prefix}.{service}.{token(host)}"


def shared(prefix: str, service: str, method: str) -> str:
    return f"{stem(prefix, service)}.{method}"


SHARED_SERVICES = ("metadata", "content")
# a host's, an instance's, a content peer's subjects; every instance answers its ping
_NOT_METHODS = ("h", "i", "p", "ping")


def on_host(subject: str, host: str) -> str | None:
    """A shared service's ``subject`` as ``host``'s own instances serve it, None for any
    other subject. nats-server picks a queue member at random across a cluster's routes,
    so a call that should stay on its host says so."""
    parts = subject.split(".", 2)
    if len(parts) < 3 or parts[1] not in SHARED_SERVICES or parts[2].split(".", 1)[0] in _NOT_METHODS:
        return None
    prefix, service, method = parts
    return f"{host_stem(stem(prefix, service), host)}.{method}"


def host_stem(stem: str, host: str) -> str:
    """Where ``host``'s instances serve a shared service whose subjects start with ``stem``."""
    return f"{stem}.h.{token(host)}"


def local(prefix: str, service: str, host: str, method: str) -> str:
    return f"{stem(prefix, service, host)}.{method}"


def events(prefix: str) -> str:
    return f"{prefix}.events"


def hello(prefix: str) -> str:
    """Where a service instance says it (re)started, so callers send lost calls again."""
    return f"{prefix}.hello"


def inbox(user: str) -> str:
    """Where the replies to ``user``'s requests come (nats-py's ``inbox_prefix``): each
    credential has its own, and may read no other (docs/security.md)."""
    return f"_INBOX.{user}"


_SUBJECT = re.compile(r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$")


def valid_subject(subject: str) -> bool:
    """A subject one may publish to: dot-separated tokens, no wildcard, no space."""
    return len(subject) <= 256 and bool(_SUBJECT.match(subject))
