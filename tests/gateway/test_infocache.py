"""The gateway's cache of content records: what it keeps and what it must not."""

from __future__ import annotations

import pytest

from flotilla.libs.api.content import Info
from flotilla.services.gateway import infocache
from flotilla.services.gateway.infocache import InfoCache

DIGEST = "sha256:" + "a" * 64


def test_a_fetch_that_began_before_a_drop_is_not_kept() -> None:
    cache = InfoCache()
    mark = cache.mark()
    cache.drop("ns", DIGEST)           # e.g. a delete notice while our fetch was on the bus
    cache.put("ns", Info(DIGEST, 1), mark)
    assert cache.get("ns", DIGEST) is None
    cache.put("ns", Info(DIGEST, 1), cache.mark())
    assert cache.get("ns", DIGEST) == Info(DIGEST, 1)
    assert cache.get("other", DIGEST) is None  # records are per namespace


def test_records_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(infocache.time, "monotonic", lambda: now[0])
    cache = InfoCache()
    cache.put("ns", Info(DIGEST, 1), cache.mark())
    now[0] += infocache.TTL - 0.01
    assert cache.get("ns", DIGEST) is not None
    now[0] += 0.02
    assert cache.get("ns", DIGEST) is None
