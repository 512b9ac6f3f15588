"""What ``flotilla up`` renders for nats-server: keys and permissions, never a secret."""

import stat
from pathlib import Path

import pytest

from flotilla.deploy import SERVICES, Suite
from flotilla.deploy.credentials import Permissions, grants_for


def _suite(tmp_path: Path) -> Suite:
    return Suite(root=tmp_path / "root", state=tmp_path / "state", nats_port=1, metrics_base=0,
                 prefix="p", isolated=True, cluster=None)


def test_every_process_gets_its_own_key_and_the_config_holds_no_secret(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    suite.state.mkdir(parents=True)
    suite.render_nats()
    conf = (suite.state / "nats.conf").read_text()
    seeds = {name: suite.credentials.seed_file(name) for name, _ in SERVICES}
    assert len({p.read_bytes() for p in seeds.values()}) == len(SERVICES)
    for name, seed in seeds.items():
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600
        assert seed.read_text().strip() not in conf  # only public keys reach the config
        assert f"# {name}" in conf
        assert suite.env(name)["FLOTILLA_NATS_CREDENTIALS"] == str(seed)
    assert stat.S_IMODE(suite.credentials.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((suite.state / "nats.conf").stat().st_mode) == 0o600
    first = (suite.state / "nats.conf").read_text()
    suite.render_nats()  # a second start keeps the keys
    assert (suite.state / "nats.conf").read_text() == first


def test_an_integrator_is_rendered_with_what_it_was_granted(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    suite.state.mkdir(parents=True)
    pub, sub = grants_for("p", "h1", ["metadata", "runtime", "events"], ["p.content.info"], [])
    assert pub == ("p.content.info", "p.metadata.>", "p.runtime.h1.>") and sub == ("p.events",)
    suite.grant("ci-tool", Permissions(pub, sub))
    conf = (suite.state / "nats.conf").read_text()
    line = next(line for line in conf.splitlines() if line.endswith("# ci-tool"))
    assert '"p.runtime.h1.>"' in line and '"_INBOX.ci-tool.>"' in line
    assert suite.revoke("ci-tool") and "ci-tool" not in (suite.state / "nats.conf").read_text()


@pytest.mark.parametrize("name, perms, error", [
    ("gateway", Permissions(("p.>",), ()), "component"),
    ("Bad Name", Permissions(("p.x",), ()), "credential name"),
    ("ok", Permissions(("p..x",), ()), "subject"),
    ("ok", Permissions((), ("p x",)), "subject"),
])
def test_bad_grants_are_refused(tmp_path: Path, name: str, perms: Permissions, error: str) -> None:
    suite = _suite(tmp_path)
    suite.state.mkdir(parents=True)
    with pytest.raises(ValueError, match=error):
        suite.grant(name, perms)
    with pytest.raises(ValueError, match="no service"):
        grants_for("p", "h", ["nosuch"], [], [])
