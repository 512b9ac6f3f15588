"""Our end of a task's streams: stdin as an asyncio stream, raw terminal mode, signal forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(0), "rb", 0))
    return reader


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled or not sys.stdin.isatty():
        yield
        return
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(0)
        return size.columns, size.lines
    except OSError:
        return 80, 24


@contextlib.contextmanager
def forward_signals(send: Callable[[int], Awaitable[None]]) -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP to us go to the task instead (as ctr's signal proxy does)."""
    loop = asyncio.get_running_loop()
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for s in sigs:
        loop.add_signal_handler(s, lambda s=s: loop.create_task(send(s)))
    try:
        yield
    finally:
        for s in sigs:
            loop.remove_signal_handler(s)
