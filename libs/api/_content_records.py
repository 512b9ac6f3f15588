"""The content service's records (libs/api/content.py is their contract, and re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Info:
    digest: str
    size: int = 0
    created_at: int = 0            # ns since the epoch
    updated_at: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    leases: list[str] = field(default_factory=list)  # lease ids holding it (GC roots)


@dataclass
class Status:
    ref: str
    offset: int = 0
    total: int = 0
    expected: str = ""
    started_at: int = 0
    updated_at: int = 0


@dataclass
class DigestRequest:
    namespace: str
    digest: str


@dataclass
class DeleteRequest:
    namespace: str
    digest: str
    # a collection's delete: the leases its mark saw on the record; one added since (a writer
    # of the blob that found it there) keeps the record, as containerd's GC lock would have
    leases_seen: list[str] | None = None


@dataclass
class ContentChanged:
    """The CHANGED notice: the record of ``digest`` in ``namespace`` changed at ``updated_at``."""
    namespace: str
    digest: str
    updated_at: int = 0  # 0: not said (an older service): whatever a caller keeps is stale


@dataclass
class NamespaceRequest:
    namespace: str


@dataclass
class LeaseRequest:
    namespace: str
    lease: str


@dataclass
class ListRequest:
    namespace: str
    filters: list[str] = field(default_factory=list)


@dataclass
class UpdateRequest:
    namespace: str
    info: Info
    paths: list[str] = field(default_factory=list)  # field mask; empty replaces all labels


@dataclass
class ReadRequest:
    namespace: str
    digest: str
    offset: int = 0
    size: int = -1                 # at most CHUNK per call


@dataclass
class LocalFile:
    path: str                      # the committed blob (or ingest data) file
    dev: int = 0                   # st_dev and st_ino as the service sees them: a caller
    ino: int = 0                   # that sees the same pair shares the filesystem
    size: int = 0
    host: str = ""                 # the service's host id: another host never reads the file,
                                   # even where both see one filesystem (a farm on one machine)


@dataclass
class RefRequest:
    namespace: str
    ref: str


@dataclass
class WriterOpen:
    namespace: str
    ref: str
    total: int = 0
    expected: str = ""
    lease: str = ""                # the containerd-lease of the caller, kept with the blob
    local: bool = True             # the caller may use the data file directly
    host: str = ""                 # a farm: the caller's host (its session ends when that host is lost)


@dataclass
class WriterSession:
    session: str
    instance: str                  # where the session's w.* calls go
    ref: str
    offset: int = 0
    total: int = 0
    expected: str = ""
    digest: str = ""               # digest of the bytes so far (w.status only)
    started_at: int = 0
    updated_at: int = 0
    shared: bool = False           # expected blob already stored: commit needs no bytes
    file: LocalFile | None = None  # the ingest's data file (when local was asked)


@dataclass
class SessionRequest:
    session: str
    updated_at: int = 0  # on w.close: when the writer last wrote (ns), kept with the ingest


@dataclass
class ChunkWrite:
    session: str
    offset: int
    data: bytes


@dataclass
class SyncRequest:
    session: str
    offset: int                    # the data file holds the ingest's bytes up to here


@dataclass
class CommitRequest:
    session: str
    size: int = 0
    expected: str = ""
    labels: dict[str, str] = field(default_factory=dict)
