"""What every Flotilla process does around its event loop, light enough to import before
anything else (the gateway answers its socket before it loads the bus: gateway/__main__)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable

from . import config as config_mod
from . import log as log_mod
from .config import START_NICE, Config

# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED = 256 << 20     # bytes of freed heap kept for reuse rather than given back
MMAP_ABOVE = 32 << 20      # allocations this big or bigger still get their own mapping


def keep_freed_memory() -> bool:
    """Keep freed heap memory for reuse. By default glibc gives a freed 1 MiB message buffer
    back to the kernel and the next one comes back as fresh pages, each faulted in and zeroed:
    that cost the gateway about a third of its CPU on ``ctr content ingest`` (measured here).
    False (and nothing changed) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_ABOVE))


def end_start_priority(logger: logging.Logger) -> None:
    """Take back the priority given for the start, in every thread (on Linux a niceness is a
    thread's: the pools' threads started meanwhile have it too)."""
    try:
        shift = int(os.environ.pop(START_NICE, "0") or 0)
    except ValueError:
        return
    if not shift:
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            now = os.getpriority(os.PRIO_PROCESS, int(tid))
            os.setpriority(os.PRIO_PROCESS, int(tid), now - shift)
        except OSError as exc:  # a thread that ended meanwhile, or no right to lower it
            logger.debug("start priority of thread %s: %s", tid, exc)


def run_loop(main: Awaitable[None]) -> None:
    """Run ``main`` on uvloop (about 20% less CPU per call than asyncio's loop, measured here)."""
    factory = None
    if os.environ.get("FLOTILLA_UVLOOP", "1") != "0":
        try:
            import uvloop
            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)  # type: ignore[arg-type]


def run_process(name: str, main: Callable[[Config], Awaitable[None]]) -> None:
    """Process ``name``: glibc's memory settings, its config and logs, ``main(config)`` on
    the loop, then its end (every service through libs/service.run; the gateway, which
    answers its socket before it loads the bus, directly)."""
    keep_freed_memory()
    cfg = config_mod.load()
    log_mod.setup(name, cfg.log_level)
    run_loop(main(cfg))
    exit_without_teardown()


def exit_without_teardown() -> None:
    """End the process once its loop has ended cleanly. What must still happen does (threads
    and executors joined, atexit handlers run, output flushed); the interpreter's teardown of
    every module and object does not: it frees only memory the process is about to give back,
    and cost 0.1-0.4 s of CPU per service (0.01-0.1 s left, measured here), paid by every
    process at once when a whole suite stops (a containerd stand-in's restart)."""
    shutdown = getattr(threading, "_shutdown", None)  # what Python runs first at its exit
    if shutdown is None:
        return
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
