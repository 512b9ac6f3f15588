"""The common entry point of a service process: config, logging, metrics, bus, signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from . import metrics
from .bus import Bus
from .config import Config
from .journal import Journal
from .process import end_start_priority, run_process
from .subjects import stem

Cleanup = Callable[[], Awaitable[None]]
CALL_GRACE = 5.0  # seconds a stopping service gives the bus calls it runs (supervisord waits 10)
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


async def serve(name: str, setup: Setup, cfg: Config, *, host_local: bool = False) -> None:
    """Service ``name`` on the bus until SIGTERM or SIGINT: ``run``'s loop, for a process
    that did something first on its own (the gateway answers its socket before it imports
    the bus: gateway/__main__)."""
    logger = logging.getLogger(f"flotilla.{name}")
    # instances of one program share its configured port: the Nth (FLOTILLA_INSTANCE, set by
    # deploy for numprocs > 1) takes port + 100 * N, so a second one does not die on a bound port
    instance = int(os.environ.get("FLOTILLA_INSTANCE", "0") or 0)
    metrics.serve(cfg.metrics_port + 100 * instance if cfg.metrics_port else 0)
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
    # in this order: no new requests, the running ones answered, then what they used goes;
    # one grace in all, so that a call that never ends by itself (a task's wait) cannot keep
    # the process past supervisord's SIGKILL: cut, it is sent again to the next instance
    await bus.stop_serving(min(CALL_GRACE, cfg.drain_grace))
    if cleanup is not None:
        await cleanup()
    await bus.close(grace=0)
    if bus.journal is not None:
        bus.journal.close()


def run(name: str, setup: Setup, *, host_local: bool = False) -> None:
    run_process(name, lambda cfg: serve(name, setup, cfg, host_local=host_local))
