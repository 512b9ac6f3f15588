"""The subject scheme (see docs/subjects.md).

``<prefix>.<service>.<method>`` for shared services (content, metadata);
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
