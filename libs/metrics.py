"""Prometheus metrics shared by every process; each serves its own /metrics."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Histogram, start_http_server

REQUESTS = Counter("flotilla_requests_total", "Requests served, by method and status code",
                   ["method", "code"])
LATENCY = Histogram("flotilla_request_seconds", "Request latency by method", ["method"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
BUS_RECONNECTS = Counter("flotilla_nats_reconnects_total", "NATS reconnections of this process")
BUS_RETRIES = Counter("flotilla_bus_retries_total", "Bus calls retried, by subject", ["subject"])


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serve /metrics from a daemon thread; port 0 disables it."""
    if port:
        start_http_server(port, addr=addr)


@lru_cache(maxsize=4096)
def _children(method: str, code: int) -> tuple[Counter, Histogram]:
    # label lookups cost ~10 µs each; a forwarded call observes twice
    return REQUESTS.labels(method, str(code)), LATENCY.labels(method)


def observe(method: str, code: int, seconds: float) -> None:
    requests, latency = _children(method, code)
    requests.inc()
    latency.observe(seconds)
