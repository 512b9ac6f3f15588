"""The common entry point of a service process: config, logging, metrics, bus, signals."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from . import config as config_mod
from . import log as log_mod
from . import metrics
from .bus import Bus
from .config import START_NICE, Config
from .journal import Journal
from .subjects import stem

Cleanup = Callable[[], Awaitable[None]]
Setup = Callable[[Bus, Config], Awaitable[Cleanup | None]]


def service_stem(cfg: Config, name: str, host_local: bool) -> str:
    """The first tokens of every subject of service ``name`` (``<prefix>.<name>[.<host>]``)."""
    return stem(cfg.prefix, name, cfg.host if host_local else None)


def ping_subject(cfg: Config, name: str, host_local: bool) -> str:
    return service_stem(cfg, name, host_local) + ".ping"


def journal_for(cfg: Config, name: str) -> Journal | None:
    """Where service ``name`` records its non-idempotent calls: a SQLite file its instances
    on this host share (under the state directory: it need not outlive a reboot, as no call
    does), or, for a service on a shared PostgreSQL database, that database.
    FLOTILLA_JOURNAL=off keeps none (the benchmark's "before", to measure what it costs)."""
    if os.environ.get("FLOTILLA_JOURNAL", "on") == "off":
        return None
    url = cfg.database_url(name) if name == "metadata" else ""
    if url.startswith("postgresql"):
        return Journal.at(url)
    return Journal.sqlite(cfg.state / "requests" / f"{name}.db")


async def _main(name: str, setup: Setup, cfg: Config, host_local: bool) -> None:
    logger = logging.getLogger(f"flotilla.{name}")
    bus = await Bus.connect(cfg.nats_url, f"flotilla-{name}", credentials=cfg.nats_credentials, host=cfg.host)
    bus.journal = await asyncio.to_thread(journal_for, cfg, name)
    await bus.follow_restarts(cfg.prefix)  # its calls to other services survive their restarts
    cleanup = await setup(bus, cfg)

    async def ping(_req: object) -> dict[str, object]:
        return {"service": name, "host": cfg.host}

    # every instance answers its own ping (no queue group) so a caller can count them
    await bus.serve(ping_subject(cfg, name, host_local), ping, queue="", method="ping")
    # callers whose calls this instance's predecessor had send them again now
    await bus.announce(cfg.prefix, name, service_stem(cfg, name, host_local))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("%s ready", name)
    end_start_priority(logger)
    await stop.wait()
    logger.info("%s stopping", name)
    # in this order: no new requests, the running ones answered, then what they used goes
    await bus.stop_serving()
    if cleanup is not None:
        await cleanup()
    await bus.close()
    if bus.journal is not None:
        bus.journal.close()


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


def run(name: str, setup: Setup, *, host_local: bool = False) -> None:
    keep_freed_memory()
    cfg = config_mod.load()
    log_mod.setup(name, cfg.log_level)
    # instances of one program share its configured port: the Nth (FLOTILLA_INSTANCE, set by
    # deploy for numprocs > 1) takes port + 100 * N, so a second one does not die on a bound port
    instance = int(os.environ.get("FLOTILLA_INSTANCE", "0") or 0)
    metrics.serve(cfg.metrics_port + 100 * instance if cfg.metrics_port else 0)
    run_loop(_main(name, setup, cfg, host_local))


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
