"""Issue 27: the gateway's proxy settings (services/gateway/proxy.py), from the
environment or the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from flotilla.libs.config import load
from flotilla.services.gateway.proxy import ProxySettings, settings


def _settings(tmp_path: Path, toml: str = "", **env: str) -> ProxySettings:
    conf = tmp_path / "flotilla.toml"
    conf.write_text(toml)
    return settings(load({"FLOTILLA_CONFIG": str(conf), "FLOTILLA_STATE": str(tmp_path), **env}))


def test_no_consumers_by_default(tmp_path: Path) -> None:
    got = _settings(tmp_path)
    assert got.consumers == () and got.snapshotters == {"flotilla": "overlayfs"}


def test_consumers_from_the_environment_and_from_toml(tmp_path: Path) -> None:
    got = _settings(tmp_path, FLOTILLA_PROXY_CONSUMERS="node-a, node-b")
    assert [(c.name, c.namespace, c.socket) for c in got.consumers] == [
        ("node-a", "proxy.node-a", tmp_path / "proxy" / "node-a.sock"),
        ("node-b", "proxy.node-b", tmp_path / "proxy" / "node-b.sock")]
    toml = 'proxy_consumers = ["kube", "buildkit"]\nproxy_snapshotters = "flotilla=overlayfs,copies=native"\n'
    got = _settings(tmp_path, toml)
    assert [c.name for c in got.consumers] == ["kube", "buildkit"]
    assert got.snapshotters == {"flotilla": "overlayfs", "copies": "native"}


@pytest.mark.parametrize("env", [
    {"FLOTILLA_PROXY_CONSUMERS": "../etc"},
    {"FLOTILLA_PROXY_CONSUMERS": "a/b"},
    {"FLOTILLA_PROXY_CONSUMERS": "a,a"},
    {"FLOTILLA_PROXY_SNAPSHOTTERS": "flotilla=zfs"},
    {"FLOTILLA_PROXY_SNAPSHOTTERS": "=overlayfs"},
    {"FLOTILLA_PROXY_CONSUMERS": "n" * 70, "FLOTILLA_STATE": "/run/" + "s" * 40},  # too long a socket path
])
def test_bad_settings_are_refused_by_name(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="proxy_"):
        _settings(tmp_path, **env)
