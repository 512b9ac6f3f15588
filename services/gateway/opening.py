"""The gateway answers its socket before all of it is built (``__main__``): health at once,
and every other call once the servicers are registered. A call for a method not yet there
waits here instead of being answered Unimplemented. Imports nothing heavy: it is part of
what the gateway loads before it serves."""

from __future__ import annotations

import asyncio


class OpeningFailed(Exception):
    """The gateway's start failed after its socket was answered; a held call is told so."""


class Opening:
    def __init__(self) -> None:
        self._done = asyncio.Event()
        self._failure = ""

    @property
    def pending(self) -> bool:
        return not self._done.is_set()

    def opened(self) -> None:
        self._done.set()

    def failed(self, why: str) -> None:
        if self.pending:  # once open, a later failure is no longer the start's
            self._failure = why
            self._done.set()

    async def wait(self) -> None:
        """Until every method is registered; raises OpeningFailed if that will not happen."""
        await self._done.wait()
        if self._failure:
            raise OpeningFailed(f"the gateway did not start: {self._failure}")
