"""Debian's PostgreSQL 15 in a temporary directory on a free loopback port, for tests.

Runs as the ``postgres`` user (PostgreSQL refuses root); each caller gets its own
database from ``new_database``. Every connection, even on loopback, signs in with a password
(scram-sha-256), as a farm's shared database must (docs/security.md).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from flotilla.deploy import free_port
from flotilla.testing.peers import Peer

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    return (BIN / "initdb").exists() and shutil.which("runuser") is not None


class PostgresServer(Peer):
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="flotilla-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.started = False

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
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
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "pg.log"), "-w",
                          "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off",
                          "start")
        self.started = True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg2
        name = "t" + uuid.uuid4().hex[:12]
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                password=self.password)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "-w", "stop"], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)
