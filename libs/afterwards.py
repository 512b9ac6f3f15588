"""Work a store leaves until after its answer (deleting an ended ingest's or a removed
snapshot's files): done in order by one thread, or at once when the store is closing."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Afterwards:
    def __init__(self, name: str) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name)

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` on the thread, after what was handed over before it."""
        try:
            self._thread.submit(fn, *args)
        except RuntimeError:  # closing: no thread any more
            fn(*args)

    def wait(self) -> None:
        """Return once everything handed over so far is done."""
        self._thread.submit(lambda: None).result()  # one thread, in order

    def close(self) -> None:
        """Finish what was handed over; later work runs at once, in the caller."""
        self._thread.shutdown(wait=True)
