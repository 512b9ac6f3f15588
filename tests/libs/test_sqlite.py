"""libs/sqlite.py: the writer and reader engines every SQLite store opens."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table, insert, select

from flotilla.libs.sqlite import open_sqlite

meta = MetaData()
rows = Table("rows", meta, Column("id", Integer, primary_key=True), Column("writer", Integer))


def test_writers_of_one_process_queue_for_the_writer_instead_of_meeting_sqlite_busy(tmp_path: Path) -> None:
    """With no busy timeout, a writer that met another inside SQLite would fail at once
    ("database is locked"): this process' writers must queue for the writer connection
    (SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries)."""
    writer, reader = open_sqlite(tmp_path / "db.sqlite", meta, busy_timeout=0)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for _ in range(20):
                with writer.begin() as conn:
                    conn.execute(insert(rows).values(writer=n))
                    time.sleep(0.001)  # hold the write lock a while: the others arrive meanwhile
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with reader.connect() as conn:
        assert len(conn.execute(select(rows.c.id)).all()) == 80
    writer.dispose()
    reader.dispose()
