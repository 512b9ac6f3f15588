"""Fixtures of the integrators' tests: a private Flotilla suite per module serving a socket per
consumer (a containerd using Flotilla as its content store and snapshotter), and a
registry. Each test starts its own containerds (ContainerdPeer) and stops them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flotilla.testing import PrivateSuite, Registry

from .helpers import CONSUMERS, consumer_socket, wait_for


# per module: the suite's processes do not outlive the modules that use them in a whole run
@pytest.fixture(scope="module")
def proxy_suite() -> Iterator[PrivateSuite]:
    with PrivateSuite(FLOTILLA_PROXY_CONSUMERS=",".join(CONSUMERS)) as suite:
        for name in CONSUMERS:  # bound as the gateway starts (/proxy/<name>.sock)
            wait_for(f"{name}'s socket", consumer_socket(suite, name).is_socket, 10)
        yield suite


@pytest.fixture(scope="module")
def proxy_registry() -> Iterator[Registry]:
    with Registry() as registry:
        yield registry
