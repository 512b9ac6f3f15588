"""Attachments on disk, one JSON file per task under the data root, so they outlive the
service. Each interface is written as ``adding`` before its plugins run and ``removing``
before they are undone: whatever a killed service was doing is known on restart, and
undone. Writes replace the file at once (a killed process leaves the old or the new one);
the files are not fsynced: a power loss also takes the namespaces and veths with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flotilla.libs.api.network import Bandwidth, PortMapping
from flotilla.libs.wire import WireError, from_wire, to_wire

ADDING, UP, REMOVING = "adding", "up", "removing"


@dataclass
class IfaceRecord:
    network: str
    ifname: str
    state: str                                   # adding | up | removing
    conflist: dict[str, Any]                     # as the plugins got it: DEL gets the same
    capabilities: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    ports: list[PortMapping] = field(default_factory=list)
    bandwidth: Bandwidth | None = None
    mtu: int = 0
    # standalone plugins run on it after the chain (tuning for the MTU, bandwidth when the
    # chain has none): undone first on DEL
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: int = 0                            # DELs that failed so far (retried by the sweep)


@dataclass
class TaskRecord:
    namespace: str
    container_id: str
    pid: int
    start_time: int                              # with the pid, which process it is
    netns: str                                   # where its namespace is held
    interfaces: list[IfaceRecord] = field(default_factory=list)

    @property
    def key(self) -> str:
        return key(self.namespace, self.container_id)

    def iface(self, ifname: str) -> IfaceRecord | None:
        return next((i for i in self.interfaces if i.ifname == ifname), None)


def key(namespace: str, container_id: str) -> str:
    """A file name for a task (names may hold any character containerd allows)."""
    return hashlib.sha256(f"{namespace}\0{container_id}".encode()).hexdigest()[:32]


def cni_id(namespace: str, container_id: str) -> str:
    """CNI_CONTAINERID: containerd's ``<namespace>-<id>`` made unique with a short hash
    (CNI allows letters, digits, '_', '.' and '-')."""
    return f"{namespace}-{container_id}-{key(namespace, container_id)[:8]}"


class Records:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()  # one writer of a file at a time (temporary names)

    def path(self, k: str) -> Path:
        return self.dir / f"{k}.json"

    def get(self, namespace: str, container_id: str) -> TaskRecord | None:
        return self._read(self.path(key(namespace, container_id)))

    def put(self, rec: TaskRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(rec.key)
        with self._lock:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(to_wire(rec)))
            os.replace(tmp, path)

    def delete(self, rec: TaskRecord) -> None:
        self.path(rec.key).unlink(missing_ok=True)

    def all(self) -> list[TaskRecord]:
        try:
            paths = sorted(self.dir.glob("*.json"))
        except FileNotFoundError:
            return []
        return [r for r in map(self._read, paths) if r is not None]

    @staticmethod
    def _read(path: Path) -> TaskRecord | None:
        try:
            return from_wire(TaskRecord, json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, WireError):
            # not ours or torn by hand: keep it aside rather than lose track silently
            path.rename(path.with_suffix(".bad"))
            return None
