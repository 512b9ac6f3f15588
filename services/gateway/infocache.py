"""Content records this gateway saw lately, so that an Info soon after is answered here.

ctr asks for the same few records again and again: `ctr run IMAGE` resolves the image
three times (an Info before each Read), a pull asks Info after every write and label
update. Each forwarded Info costs a bus round trip (~2.5 ms here), a cached one none.

A record is dropped when its blob is deleted (the /content/delete event) or its labels
change (the content service's change notice), whichever gateway did it; TTL bounds what a
lost message could leave. A fetch that began before a drop is not kept: it may hold what
the drop was about.
"""

from __future__ import annotations

import time

from flotilla.libs.api.content import Info

TTL = 2.0
MAX_RECORDS = 4096


class InfoCache:
    def __init__(self) -> None:
        self._records: dict[tuple[str, str], tuple[Info, float]] = {}
        self._drops = 0  # drops so far: a fetch notes it first and keeps its answer only if unchanged

    def get(self, namespace: str, digest: str) -> Info | None:
        entry = self._records.get((namespace, digest))
        if entry is None:
            return None
        if time.monotonic() - entry[1] >= TTL:
            del self._records[(namespace, digest)]
            return None
        return entry[0]

    def mark(self) -> int:
        """Call before fetching what will be ``put``."""
        return self._drops

    def put(self, namespace: str, info: Info, mark: int) -> None:
        if mark != self._drops:
            return
        if len(self._records) >= MAX_RECORDS:
            self._records.clear()
        self._records[(namespace, info.digest)] = (info, time.monotonic())

    def drop(self, namespace: str, digest: str) -> None:
        self._drops += 1
        self._records.pop((namespace, digest), None)
