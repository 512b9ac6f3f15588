from pathlib import Path

from flotilla.libs.config import Config, load


def test_defaults() -> None:
    cfg = load({})
    assert cfg.root == Path("/var/lib/flotilla") and cfg.socket_path == "/run/flotilla/flotilla.sock"
    assert cfg.database_url("metadata") == "sqlite:////var/lib/flotilla/metadata/meta.db"


def test_toml_then_environment_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "flotilla.toml"
    toml.write_text('root = "/srv/fl"\nmetrics_port = 9100\nprefix = "farm"\nrequest_timeout = 2.5\n')
    cfg = load({"FLOTILLA_CONFIG": str(toml), "FLOTILLA_PREFIX": "override", "FLOTILLA_HOST_ID": "h1"})
    assert cfg == Config(root=Path("/srv/fl"), metrics_port=9100, prefix="override", request_timeout=2.5,
                         host_id="h1")
    assert cfg.host == "h1" and cfg.socket_path == "/run/flotilla/flotilla.sock"


def test_missing_config_file_is_fine(tmp_path: Path) -> None:
    assert load({"FLOTILLA_CONFIG": str(tmp_path / "none.toml")}) == Config()
