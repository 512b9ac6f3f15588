"""One farm of three hosts for the package's tests; a test that fails prints what each
host's content, metadata and gateway said last."""

from __future__ import annotations

import subprocess
from collections.abc import Generator, Iterator

import pytest

from flotilla.testing.farm import Farm
from flotilla.testing.images import busybox_image
from flotilla.testing.postgres import available


@pytest.fixture(scope="package")
def farm() -> Iterator[Farm]:
    if not available():
        pytest.skip("PostgreSQL is installed by make test")
    with Farm(3) as f:
        yield f


@pytest.fixture(scope="package")
def busybox(farm: Farm) -> str:
    return farm.push("busybox", "farm", busybox_image())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.failed_call = report.failed  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def content_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not getattr(request.node, "failed_call", False) or "farm" not in request.fixturenames:
        return
    for host in request.getfixturevalue("farm").hosts:
        for name, lines in (("content", 40), ("metadata", 15), ("gateway", 15)):
            log = host.suite.logs / f"{name}.log"
            tail = subprocess.run(["grep", "-v", '"level": "debug"\\|"msg": "copied', str(log)], capture_output=True,
                                  text=True).stdout
            print(f"===== {host.id}: {log}\n" + "\n".join(tail.splitlines()[-lines:]))
