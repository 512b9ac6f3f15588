"""Debian's PostgreSQL 15 in a temporary directory, for tests and simulated farms.

Runs as the ``postgres`` user (PostgreSQL refuses root); each caller gets its own database
from ``new_database``. Every connection, even on loopback, signs in with a password
(scram-sha-256), as a farm's shared database must (docs/security.md). On loopback by
default; a farm's runs in a network namespace of its own and takes its hosts' subnet.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from flotilla.deploy import enter_netns, free_port

from .peers import Peer

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    return (BIN / "initdb").exists() and shutil.which("runuser") is not None


class PostgresServer(Peer):
    def __init__(self, *, address: str = "127.0.0.1", port: int = 0, netns: str = "",
                 clients: str = "") -> None:
        """``netns``: run in that network namespace, listening on ``address``; ``clients``:
        a subnet (``10.0.0.0/24``) whose hosts may sign in besides loopback."""
        self.base = Path(tempfile.mkdtemp(prefix="flotilla-pg-"))
        self.data = self.base / "data"
        self.address, self.netns, self.clients = address, netns, clients
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(18)
        self.started = False

    def _as_postgres(self, *args: str) -> None:
        enter = enter_netns(self.netns) if self.netns else []
        subprocess.run([*enter, "runuser", "-u", "postgres", "--", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> None:
        shutil.chown(self.base, "postgres", "postgres")
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        self._as_postgres(str(BIN / "initdb"), "-D", str(self.data), "--auth=scram-sha-256", "-U", "postgres",
                          f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        if self.clients:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.clients} scram-sha-256\n")
        listen = self.address if self.address == "127.0.0.1" else f"127.0.0.1,{self.address}"
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "pg.log"), "-w",
                          "-o", f"-p {self.port} -k {self.base} -c listen_addresses={listen} -c fsync=off "
                                "-c max_connections=300",
                          "start")
        self.started = True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres:{self.password}@{self.address}:{self.port}/{database}"

    def new_database(self) -> str:
        name = "t" + uuid.uuid4().hex[:12]
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def sql(self, statement: str) -> None:
        """One statement as the superuser (over the socket directory: no network needed)."""
        import psycopg2
        conn = psycopg2.connect(host=str(self.base), port=self.port, user="postgres", dbname="postgres",
                                password=self.password)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def stop(self) -> None:
        if self.started:
            self.started = False
            stop_at(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def stop_at(base: Path) -> None:
    """Stop the server whose directory is ``base`` (it may run in any namespace) and remove it."""
    subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(base / "data"),
                    "-m", "immediate", "-w", "stop"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    shutil.rmtree(base, ignore_errors=True)
