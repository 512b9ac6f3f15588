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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Float, LargeBinary, MetaData, String, Table, create_engine, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .sqlite import open_sqlite

KEEP = 600.0

_meta = MetaData()
requests = Table(
    "flotilla_requests", _meta,
    Column("id", String(128), primary_key=True),
    Column("instance", String(64), nullable=False),  # who runs it (or ran it)
    Column("started", Float, nullable=False),
    Column("reply", LargeBinary, nullable=True),     # None while it runs
)


@dataclass(frozen=True)
class Claim:
    """What ``claim`` found: a recorded reply, or who runs the call now."""
    reply: bytes | None = None
    runner: str = ""        # the instance that holds the id ("" when we took it)


class Journal:
    def __init__(self, writer: Engine, reader: Engine | None = None) -> None:
        self.writer, self.reader = writer, reader or writer
        _meta.create_all(self.writer)
        self._swept = 0.0

    @classmethod
    def sqlite(cls, path: Path) -> "Journal":
        writer, reader = open_sqlite(path)
        return cls(writer, reader)

    @classmethod
    def at(cls, url: str) -> "Journal":
        """On a database given by URL (a farm's PostgreSQL)."""
        return cls(create_engine(url, pool_pre_ping=True))

    def claim(self, request_id: str, instance: str) -> Claim:
        """Take ``request_id`` for ``instance``, unless it is recorded or held by another."""
        now = time.time()
        self._sweep(now)
        for _ in range(3):  # the row may be swept between our insert and our read
            try:
                with self.writer.begin() as conn:
                    conn.execute(insert(requests).values(id=request_id, instance=instance, started=now))
                return Claim()
            except IntegrityError:
                pass
            with self.reader.connect() as conn:
                row = conn.execute(select(requests.c.instance, requests.c.reply)
                                   .where(requests.c.id == request_id)).first()
            if row is not None:
                return Claim(reply=row.reply) if row.reply is not None else Claim(runner=row.instance)
        raise RuntimeError(f"request {request_id}: journal entry keeps vanishing")

    def take_over(self, request_id: str, dead: str, instance: str) -> bool:
        """Hand the call ``dead`` held to ``instance``; False when another was quicker."""
        with self.writer.begin() as conn:
            return bool(conn.execute(update(requests).where(
                requests.c.id == request_id, requests.c.instance == dead, requests.c.reply.is_(None))
                .values(instance=instance, started=time.time())).rowcount)

    def record(self, request_id: str, reply: bytes) -> None:
        with self.writer.begin() as conn:
            conn.execute(update(requests).where(requests.c.id == request_id).values(reply=reply))

    def release(self, request_id: str) -> None:
        """Forget a call whose outcome must not be replayed (a transient failure): a
        repeat runs it again."""
        with self.writer.begin() as conn:
            conn.execute(delete(requests).where(requests.c.id == request_id, requests.c.reply.is_(None)))

    def reply(self, request_id: str) -> bytes | None:
        with self.reader.connect() as conn:
            return conn.execute(select(requests.c.reply).where(requests.c.id == request_id)).scalar()

    def _sweep(self, now: float) -> None:
        if now - self._swept < KEEP / 10:
            return
        self._swept = now
        with self.writer.begin() as conn:
            conn.execute(delete(requests).where(requests.c.started < now - KEEP))

    def close(self) -> None:
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()
