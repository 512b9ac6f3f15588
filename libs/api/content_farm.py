"""How a farm's content instances talk among themselves (docs/farm.md): the subjects of one
host's instances, the beat that says which hosts are up, and the notice of a blob gone.

A host's instances serve ``<prefix>.content.p.<host>.<method>`` ("peer") in one queue
group; an ingest placed on a host is opened there (``writer.open``) and its session goes on as
any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..routes import Route, method_name
from ..subjects import token
from . import content as c

BEAT_EVERY = 1.0     # seconds between an instance's beats
LIVE_WITHIN = 4.0    # a host unheard for longer is not sent a call


@dataclass
class CopyRead:
    digest: str
    offset: int = 0
    size: int = c.CHUNK          # at most CHUNK


@dataclass
class Blob:
    digest: str


@dataclass
class CopyTicket:
    """Where and with what to fetch a copy over a socket (services/content/bulk.py)."""
    token: str
    address: str                 # host:port


@dataclass
class HostBeat:
    host: str
    instance: str


# this host's copy's bytes (a right copy, or NotFound)
COPY_READ: Route[CopyRead, bytes] = Route("copy.read", CopyRead, None, idempotent=True)
# a ticket for this host's copy over its socket (NotFound: no right copy; Unavailable: no socket)
COPY_OPEN: Route[Blob, CopyTicket] = Route("copy.open", Blob, CopyTicket)
# hold a copy of the blob (fetched from the hosts that have one) before answering
COPY_TAKE: Route[Blob, None] = Route("copy.take", Blob, None, idempotent=True, timeout=600.0)
# the ingest's own host: the same methods as the shared subject's, without placing again
WRITER_OPEN = c.WRITER_OPEN
STATUS = c.STATUS
ABORT = c.ABORT
LIST_STATUSES = c.LIST_STATUSES

BEAT = "beat"        # published on <prefix>.content.beat, a HostBeat
GONE = "gone"        # published on <prefix>.content.gone, a Blob deleted: every host drops its copy


def host_stem(prefix: str, host: str) -> str:
    return f"{c.stem(prefix)}.p.{token(host)}"


def host_subject(prefix: str, host: str, method: Route[Any, Any] | str) -> str:
    return f"{host_stem(prefix, host)}.{method_name(method)}"


def notice_subject(prefix: str, notice: str) -> str:
    return f"{c.stem(prefix)}.{notice}"
