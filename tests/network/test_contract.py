"""The network service's place in the suite: its subjects, its credential's permissions, its
process in SERVICES (test_suite.py shows nats-server refusing the rest)."""

from __future__ import annotations

from flotilla.deploy import SERVICES
from flotilla.deploy.credentials import component_permissions, grants_for
from flotilla.libs.api import network as api


def test_subjects_and_grants() -> None:
    assert ("network", "flotilla.services.network") in SERVICES
    names = [n for n, _ in SERVICES]
    assert names.index("network") < names.index("gateway")
    assert api.subject("p", "h", api.ATTACH) == "p.network.h.tasks.attach"
    perms = component_permissions("p", "h.x")
    assert perms["network"].subscribe == ("p.network.h_x.>", "p.hello")
    assert perms["network"].publish == ("p.hello", "p.network.h_x.i.*.ping")  # its replies need no grant
    assert "p.>" in perms["gateway"].publish  # the gateway calls it (Tasks.Create, Networks/*)
    assert grants_for("p", "h", ["network"], [], []) == (("p.network.h.>",), ())
