"""Who may say what on the bus: nkey credentials and nats-server permissions.

Every process of a suite connects to its nats-server as a user of its own, an nkey whose
seed lives in a file only root can read (``<root>/credentials/<user>.nk``); nats-server's
configuration holds only the public keys and, per user, the subjects it may publish and
subscribe to (nats-server's own authorization: nothing home-made checks a message). A
connection without a known key is refused. Permissions follow each component's contract
(docs/security.md): a service subscribes to its own subjects and its inbox, publishes its
replies, its events and the requests of the services it calls.

Integrators get a credential of their own with ``flotilla credentials create`` (kept in
``integrators.json`` beside the seeds, rendered into the same configuration).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import nkeys

from flotilla.libs.api import content as c
from flotilla.libs.api import content_farm as cf
from flotilla.libs.api import metadata as md
from flotilla.libs import subjects
from flotilla.libs.subjects import inbox, on_host, token

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def component_permissions(prefix: str, host: str) -> dict[str, Permissions]:
    """Each component's contract on the bus, for the suite with subject ``prefix`` on ``host``."""
    h = token(host)
    events = f"{prefix}.events"
    # by the contracts' method names, so a renamed method cannot slip out of a grant
    content_read = tuple(c.subject(prefix, m) for m in (
        "ping", c.INFO, c.LIST, c.READ, c.LOCAL_PATH, c.STATUS, c.LIST_STATUSES, c.NAMESPACES, c.NAMESPACE_HELD))
    content_write = tuple(c.subject(prefix, m) for m in (c.WRITER_OPEN, c.ABORT, c.UPDATE)) \
        + (c.instance_subject(prefix, "*", ">"),)
    metadata_for_transfer = tuple(md.subject(prefix, m) for m in (
        "ping", md.IMAGE_GET, md.IMAGE_CREATE, md.IMAGE_UPDATE, md.LEASE_CREATE, md.LEASE_DELETE,
        md.LEASE_ADD_RESOURCE))
    # and the same methods of this host's own instances (libs/subjects.on_host)
    content_read, content_write, metadata_for_transfer = (
        (*grant, *(mine for mine in (on_host(s, host) for s in grant) if mine))
        for grant in (content_read, content_write, metadata_for_transfer))
    grants = {
        "metadata": Permissions(
            publish=(events, f"{prefix}.content.>", f"{prefix}.snapshots.{h}.>"),
            subscribe=(f"{prefix}.metadata.>",)),
        "content": Permissions(
            # on a farm: the other hosts' instances, the hosts' beats, a blob gone (content_farm.py)
            publish=(events, f"{prefix}.content.changed", f"{prefix}.content.p.*.>",
                     cf.notice_subject(prefix, cf.BEAT), cf.notice_subject(prefix, cf.GONE)),
            subscribe=(f"{prefix}.content.>",)),
        "snapshots": Permissions(
            publish=(events, *content_read, *content_write),
            subscribe=(f"{prefix}.snapshots.{h}.>",)),
        "runtime": Permissions(
            # checkpoints are written into (and restores read from) the content store
            publish=(events, *content_read, *content_write),
            subscribe=(f"{prefix}.runtime.{h}.>",)),
        "transfer": Permissions(
            # progress goes to the caller's inbox (the request's ``progress`` subject)
            publish=(events, *content_read, *content_write, *metadata_for_transfer,
                     f"{prefix}.snapshots.{h}.>", "_INBOX.>"),
            subscribe=(f"{prefix}.transfer.{h}.>",)),
        # runs the CNI plugins on its host; says nothing on the bus but its replies
        "network": Permissions(
            publish=(),
            subscribe=(f"{prefix}.network.{h}.>",)),
        # the gateway serves clients, who may ask for anything
        "gateway": Permissions(
            publish=(f"{prefix}.>",),
            subscribe=(events, f"{prefix}.content.changed", f"{prefix}.gateway.>")),
    }
    # every component says when it (re)started and hears the others say it, and may ask
    # another instance of its own service whether it is alive (libs/bus.py)
    stems = {"metadata": "metadata", "content": "content", "gateway": "gateway",
             "snapshots": f"snapshots.{h}", "runtime": f"runtime.{h}", "transfer": f"transfer.{h}",
             "network": f"network.{h}"}
    hello = subjects.hello(prefix)
    return {name: Permissions(publish=(*p.publish, hello, f"{prefix}.{stems[name]}.i.*.ping"),
                              subscribe=(*p.subscribe, hello))
            for name, p in grants.items()}


SERVICES = ("metadata", "content", "snapshots", "runtime", "transfer", "network")


def grants_for(prefix: str, host: str, services: list[str], publish: list[str],
               subscribe: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An integrator's subjects: those of each service it may call (``events`` to watch the
    events), then subjects given one by one."""
    pub, sub = list(publish), list(subscribe)
    for service in services:
        if service == "events":
            sub.append(f"{prefix}.events")
        elif service in ("metadata", "content"):
            pub.append(f"{prefix}.{service}.>")
        elif service in SERVICES:
            pub.append(f"{prefix}.{service}.{token(host)}.>")
        else:
            raise ValueError(f"no service {service!r}: one of {', '.join(SERVICES)}, events")
    return tuple(pub), tuple(sub)


class CredentialStore:
    """The seeds (one file per user, 0600 in a 0700 directory) and the integrators' grants."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def seed_file(self, user: str) -> Path:
        return self.dir / f"{user}.nk"

    def ensure(self, user: str) -> str:
        """``user``'s public key, its seed made on first use."""
        path = self.seed_file(user)
        if not path.exists():
            self._prepare_dir()
            write_private(path, nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER) + b"\n")
        return public_key(path)

    def remove(self, user: str) -> None:
        self.seed_file(user).unlink(missing_ok=True)

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    # -- integrators -----------------------------------------------------------------

    @property
    def _grants(self) -> Path:
        return self.dir / "integrators.json"

    def integrators(self) -> dict[str, Permissions]:
        try:
            raw = json.loads(self._grants.read_text())
        except FileNotFoundError:
            return {}
        return {name: Permissions(tuple(p["publish"]), tuple(p["subscribe"])) for name, p in raw.items()}

    def grant(self, user: str, perms: Permissions) -> Path:
        """Make (or replace the permissions of) integrator ``user``; returns its seed file."""
        if not _NAME.match(user):
            raise ValueError(f"credential name {user!r}: lower-case letters, digits, '-' and '_' only")
        for subject in (*perms.publish, *perms.subscribe):
            check_subject(subject)
        grants = self.integrators()
        grants[user] = perms
        self.ensure(user)
        self._write_grants(grants)
        return self.seed_file(user)

    def revoke(self, user: str) -> bool:
        grants = self.integrators()
        if grants.pop(user, None) is None:
            return False
        self._write_grants(grants)
        self.remove(user)
        return True

    def _write_grants(self, grants: dict[str, Permissions]) -> None:
        self._prepare_dir()
        write_private(self._grants, json.dumps({n: asdict(p) for n, p in sorted(grants.items())}, indent=1).encode())


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once, readable by its owner alone from the start."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def nats_accepts(port: int, seed: bytes, timeout: float = 2.0) -> bool:
    """Whether the nats-server on 127.0.0.1:``port`` lets the key of ``seed`` in now (its
    plain text protocol: sign the nonce of its INFO, CONNECT, PING; PONG means in)."""
    key = nkeys.from_seed(seed.strip())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as conn:
            reader = conn.makefile("rb")
            info = json.loads(reader.readline().split(b" ", 1)[1])
            sig = base64.urlsafe_b64encode(key.sign(info["nonce"].encode())).rstrip(b"=").decode()
            hello = {"verbose": False, "pedantic": False, "nkey": key.public_key.decode(), "sig": sig}
            conn.sendall(f"CONNECT {json.dumps(hello)}\r\nPING\r\n".encode())
            return reader.readline().startswith(b"PONG")
    except (OSError, ValueError, KeyError, IndexError):
        return False


def public_key(seed_file: Path) -> str:
    return nkeys.from_seed(seed_file.read_bytes().strip()).public_key.decode()


_SUBJECT = re.compile(r"^[A-Za-z0-9_$-]+(\.([A-Za-z0-9_$-]+|\*))*(\.>)?$|^>$|^\*(\.[^.\s]+)*$")


def check_subject(subject: str) -> None:
    if not _SUBJECT.match(subject):
        raise ValueError(f"subject {subject!r}: tokens of letters, digits, '_', '-', '$', or '*', '>'")


def authorization(users: dict[str, tuple[str, Permissions]]) -> str:
    """nats-server's ``authorization`` block for ``users`` (name -> public key, permissions).
    Every user may subscribe to its own inbox and answer the requests it receives."""
    entries = []
    for name, (key, perms) in sorted(users.items()):
        subscribe = (*perms.subscribe, f"{inbox(name)}.>")
        entries.append(
            f"    {{ nkey: {json.dumps(key)}, permissions: {{"
            f" publish: {{ allow: {json.dumps(list(perms.publish))} }},"
            f" subscribe: {{ allow: {json.dumps(list(subscribe))} }},"
            f" allow_responses: true }} }}  # {name}")
    return "authorization {\n  users = [\n" + "\n".join(entries) + "\n  ]\n}\n"
