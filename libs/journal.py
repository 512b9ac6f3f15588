"""What each non-idempotent request did, by its request id, so a repeat does the work once.

A caller sends a call that is not idempotent with a request id and sends it again, with the
same id, when the instance that had it may have died (issue 22). Before the work, the
serving instance claims the id; after it, it records the reply:

* a repeat of a finished call gets the recorded reply;
* a repeat of a call another live instance still runs waits for that instance's reply;
* a repeat of a call whose instance died is run again by the one that has it now, told
  that it *replays* (the dead one may have done the work without recording the answer).

The journal is a table of its own, in a SQLite file that the instances of one host share or
in the service's PostgreSQL database that a farm shares. Entries are kept ``KEEP`` seconds:
far longer than any caller's deadline.

It speaks DB-API directly (stdlib sqlite3, or psycopg2), not SQLAlchemy: every process that
serves on the bus opens one, and importing SQLAlchemy would add about 0.4 s to the start of
each (a restarted service answers that much later).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import postgres

KEEP = 600.0
TABLE = "flotilla_requests"
_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id VARCHAR(128) PRIMARY KEY, "
           "instance VARCHAR(64) NOT NULL, started DOUBLE PRECISION NOT NULL, reply {blob})")


@dataclass(frozen=True)
class Claim:
    """What ``claim`` found: a recorded reply, or who runs the call now."""
    reply: bytes | None = None
    runner: str = ""        # the instance that holds the id ("" when we took it)


class Journal:
    """One connection, one statement at a time (a lock): entries are tiny and each call
    makes at most three."""

    def __init__(self, conn: Any, integrity_error: type[Exception], param: str) -> None:
        self._conn, self._integrity_error, self._param = conn, integrity_error, param
        self._lock = threading.Lock()
        self._swept = 0.0
        self._reconnect: Callable[[], Any] | None = None  # PostgreSQL: a dropped connection's
        self._lost: tuple[type[Exception], ...] = ()         # exceptions, and how to make it again

    @classmethod
    def sqlite(cls, path: Path) -> "Journal":
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # the file need not outlive a reboot (no call does): a process' death loses nothing
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_SCHEMA.format(blob="BLOB"))
        return cls(conn, sqlite3.IntegrityError, "?")

    @classmethod
    def at(cls, url: str) -> "Journal":
        """On a database given by SQLAlchemy URL (a farm's PostgreSQL)."""
        import psycopg2  # only a farm's services need it

        def connect() -> Any:
            conn = psycopg2.connect(postgres.libpq_url(url), **postgres.CONNECT_ARGS)
            conn.autocommit = True
            return conn
        journal = cls(connect(), psycopg2.IntegrityError, "%s")
        journal._reconnect = connect
        journal._lost = (psycopg2.OperationalError, psycopg2.InterfaceError)
        journal._run(_SCHEMA.format(blob="BYTEA"))
        return journal

    def _run(self, sql: str, *args: Any) -> Any:
        """Run one statement (its own transaction); returns the cursor's first row and its
        row count. A connection the server dropped (it restarted) is made again, once."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    cur = self._conn.cursor()
                    try:
                        cur.execute(sql.replace("?", self._param), args)
                        row = cur.fetchone() if cur.description else None
                        return row, cur.rowcount
                    finally:
                        cur.close()
                except self._lost:
                    if attempt == 2 or self._reconnect is None:
                        raise
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = self._reconnect()

    def claim(self, request_id: str, instance: str) -> Claim:
        """Take ``request_id`` for ``instance``, unless it is recorded or held by another."""
        now = time.time()
        self._sweep(now)
        for _ in range(3):  # the row may be swept between our insert and our read
            try:
                self._run(f"INSERT INTO {TABLE} (id, instance, started) VALUES (?, ?, ?)", request_id, instance, now)
                return Claim()
            except self._integrity_error:
                pass
            row, _ = self._run(f"SELECT instance, reply FROM {TABLE} WHERE id = ?", request_id)
            if row is not None:
                return Claim(reply=bytes(row[1])) if row[1] is not None else Claim(runner=row[0])
        raise RuntimeError(f"request {request_id}: journal entry keeps vanishing")

    def take_over(self, request_id: str, dead: str, instance: str) -> bool:
        """Hand the call ``dead`` held to ``instance``; False when another was quicker."""
        _, count = self._run(f"UPDATE {TABLE} SET instance = ?, started = ? "
                             "WHERE id = ? AND instance = ? AND reply IS NULL",
                             instance, time.time(), request_id, dead)
        return bool(count)

    def record(self, request_id: str, reply: bytes) -> None:
        self._run(f"UPDATE {TABLE} SET reply = ? WHERE id = ?", reply, request_id)

    def release(self, request_id: str) -> None:
        """Forget a call whose outcome must not be replayed (a transient failure): a
        repeat runs it again."""
        self._run(f"DELETE FROM {TABLE} WHERE id = ? AND reply IS NULL", request_id)

    def reply(self, request_id: str) -> bytes | None:
        row, _ = self._run(f"SELECT reply FROM {TABLE} WHERE id = ?", request_id)
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def _sweep(self, now: float) -> None:
        if now - self._swept < KEEP / 10:
            return
        self._swept = now
        self._run(f"DELETE FROM {TABLE} WHERE started < ?", now - KEEP)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
