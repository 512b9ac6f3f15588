"""Configuration: environment variables over an optional TOML file over defaults.

Every setting has an environment variable ``FLOTILLA_<NAME>``; the TOML file named by
``FLOTILLA_CONFIG`` (default ``/etc/flotilla/flotilla.toml``, optional) holds the same
names in lower case at top level.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# set by deploy for a program started at another niceness for its start only (the gateway:
# its imports get the CPU first while every program of a suite starts at once); the service
# takes that back once it serves (libs/process.end_start_priority)
START_NICE = "FLOTILLA_START_NICE"


@dataclass(frozen=True)
class Config:
    root: Path = Path("/var/lib/flotilla")          # persistent data
    state: Path = Path("/run/flotilla")             # runtime state, sockets
    nats_url: str = "nats://127.0.0.1:14222"
    nats_credentials: str = ""                      # this process' nkey seed file ("" = none)
    prefix: str = "flotilla"                        # first token of every subject
    host_id: str = ""                               # host-local services' subject token
    socket: str = ""                                # gateway socket; default <state>/flotilla.sock
    metrics_port: int = 0                           # this process' /metrics on 127.0.0.1; 0 = off
    db_url: str = ""                                # metadata database; default SQLite under root
    log_level: str = "info"
    request_timeout: float = 10.0                   # default deadline of a bus call, seconds
    proxy_consumers: str = ""                       # containerds served as proxy plugins: "a,b" (docs/integrators.md)
    proxy_snapshotters: str = "flotilla=overlayfs"  # their snapshot proxy's name=Flotilla snapshotter, ...
    # seconds a stopping gateway gives the calls it runs; new calls already go to another gateway
    # (or wait in the socket's backlog for the next one), so this is what a graceful restart
    # costs no client (supervisord's stopwaitsecs is longer). Every other service gives its
    # bus calls 5 s, or this if less. 0: cut them at once, as a containerd stopping does (its
    # stand-in: flotilla/testing/daemon.py)
    drain_grace: float = 20.0
    # the content store's records: "" keeps them in SQLite under root (one host); a farm's
    # PostgreSQL makes the store the farm's, its bytes on every host (docs/farm.md)
    content_db_url: str = ""
    content_copies: int = 2           # hosts holding a written blob before its commit is acked (farm)
    content_cache: int = 32 << 30     # bytes of copies a host keeps beyond those it must (farm, LRU)
    host_lost_after: float = 30.0     # seconds a content host is unheard before its copies are made again
    content_peer_listen: str = ""     # address:port this host's copies are served on to other hosts ("": over the bus)
    # seconds a layer applied ahead of its Diff.Apply waits for it (services/snapshots/ahead.py);
    # 0: no layer is applied ahead
    apply_ahead_ttl: float = 300.0

    @property
    def socket_path(self) -> str:
        return self.socket or str(self.state / "flotilla.sock")

    @property
    def host(self) -> str:
        return self.host_id or socket.gethostname().split(".")[0]

    def database_url(self, name: str) -> str:
        return self.db_url or f"sqlite:///{self.root / name / 'meta.db'}"


def toml_values(env: Mapping[str, str]) -> dict[str, object]:
    """The TOML file FLOTILLA_CONFIG names (default /etc/flotilla/flotilla.toml), {} if none."""
    path = Path(env.get("FLOTILLA_CONFIG", "/etc/flotilla/flotilla.toml"))
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def load(env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    values: dict[str, object] = toml_values(env)
    for field in dataclasses.fields(Config):
        key = "FLOTILLA_" + field.name.upper()
        if key in env:
            values[field.name] = env[key]
    kwargs: dict[str, object] = {}
    for field in dataclasses.fields(Config):
        if field.name not in values:
            continue
        raw = values[field.name]
        default = field.default
        if isinstance(default, Path):
            kwargs[field.name] = Path(str(raw))
        elif isinstance(default, bool):
            kwargs[field.name] = str(raw).lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            kwargs[field.name] = type(default)(raw)
        else:
            kwargs[field.name] = str(raw)
    return Config(**kwargs)  # type: ignore[arg-type]
