"""Records this gateway saw lately, so that a Get soon after is answered here.

ctr asks for the same few records again and again: `ctr run IMAGE` resolves the image
three times (a Content.Info before each Read), gets its container three times and its
namespace twice; a pull asks Content.Info after every write. Each forwarded Get costs a
bus round trip (~2.5 ms here), a cached one none.

A record is dropped when an event or notice says it changed or went (whichever gateway or
service did it) and by this gateway's own updates and deletes, except an update that
returns the whole new record (``replace``); TTL bounds what a lost message could leave.
A fetch that began before a drop is not kept: it may hold what the drop was about.
Not-found answers are never kept: a record made elsewhere shows at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from .events import EventHub

TTL = 2.0
MAX_RECORDS = 4096

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)


class RecordCache(Generic[T]):
    def __init__(self) -> None:
        self._records: dict[Key, tuple[T, float]] = {}
        self._drops = 0  # drops so far: a fetch notes it first and keeps its answer only if unchanged
        # per key, the updates of it in flight (``replace``): each collects the announced
        # changes its answer must show to be kept
        self._updating: dict[Key, list[list[Callable[[T], bool]]]] = {}

    def get(self, key: Key) -> T | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[1] >= TTL:
            del self._records[key]
            return None
        return entry[0]

    def drop(self, key: Key) -> None:
        self._drops += 1
        self._records.pop(key, None)

    async def fetch(self, key: Key, load: Callable[[], Awaitable[T]]) -> T:
        """The record: kept, or loaded (and kept unless a drop came meanwhile)."""
        record = self.get(key)
        if record is None:
            record = await self.keep(key, load())
        return record

    async def keep(self, key: Key, answer: Awaitable[T]) -> T:
        """Await ``answer`` (a load, or a write that returns the record) and keep it."""
        mark = self.mark()
        record = await answer
        self.put(key, record, mark)
        return record

    async def replace(self, key: Key, answer: Awaitable[T]) -> T:
        """Await ``answer`` (an update that returns the whole new record) and keep what it
        returns, if it shows every change announced meanwhile (``drop_unless``; the notice
        of this very update may come first) and no other drop came; else drop the record."""
        mark = self.mark()
        announced: list[Callable[[T], bool]] = []
        self._updating.setdefault(key, []).append(announced)
        try:
            record = await answer
        except BaseException:
            self.drop(key)
            raise
        finally:
            waiting = self._updating[key]
            waiting.remove(announced)
            if not waiting:
                del self._updating[key]
        kept = mark == self._drops and all(shows(record) for shows in announced)
        self.drop(key)  # a fetch in flight began before this update: it is not kept
        if kept:
            self.put(key, record, self.mark())
        return record

    async def change(self, key: Key, answer: Awaitable[T]) -> T:
        """Await ``answer`` (an update or delete of the record) and drop the record, whatever
        came of it: the service's event may reach us after the caller's next Get."""
        try:
            return await answer
        finally:
            self.drop(key)

    def mark(self) -> int:
        """Note before asking for what will be ``put`` (when its key is known only after)."""
        return self._drops

    def put(self, key: Key, record: T, mark: int) -> bool:
        """Keep ``record`` unless a drop came since ``mark``; says whether it was kept."""
        if mark != self._drops:
            return False
        if len(self._records) >= MAX_RECORDS:
            self._records.clear()
        self._records[key] = (record, time.monotonic())
        return True

    def drop_unless(self, key: Key, shows: Callable[[T], bool]) -> None:
        """A change of ``key`` was announced: drop the record unless ``shows`` says the kept
        one already shows the change (this gateway's own update, kept by ``replace``). An
        update of ``key`` in flight keeps its answer only if that shows the change too."""
        for announced in self._updating.get(key, ()):
            announced.append(shows)
        entry = self._records.get(key)
        if entry is not None and shows(entry[0]):
            return
        if key in self._updating:
            self._records.pop(key, None)
            return
        self.drop(key)

    def drop_on(self, hub: EventHub, topics: Iterable[str], key: Callable[[dict[str, Any]], Key]) -> None:
        """Drop the record an event of ``topics`` names (``key`` reads it from the event)."""
        for topic in topics:
            hub.watch(topic, lambda event: self.drop(key(event)))


def event_key(field: str, namespace_scoped: bool = True) -> Callable[[dict[str, Any]], Key]:
    """The key of the record an event names: (its namespace, its ``field``); namespaces
    themselves are keyed ("", name)."""
    def key(event: dict[str, Any]) -> Key:
        name = str((event.get("fields") or {}).get(field, ""))
        return (str(event.get("namespace", "")), name) if namespace_scoped else ("", name)
    return key
