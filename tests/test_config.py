"""Config validation: one clear message naming the key, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.cli import main
from monitor.config import ConfigError, load_config

from .conftest import write_config


def test_default_config_loads_and_resolves_paths() -> None:
    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(repo / "config.toml")
    assert cfg.warehouse.path == repo / "data" / "warehouse.duckdb"
    assert cfg.dbt.project_dir == repo / "pipeline"
    assert cfg.http.host == "127.0.0.1"
    assert set(cfg.ingest.feeds) == {"companies", "employees", "plans", "claims"}


@pytest.mark.parametrize(
    ("extra", "overrides", "message"),
    [
        ('[tuning]\nx = 1\n', {}, "unknown key 'tuning'"),
        ("", {"host": '"127.0.0.1"\nhots = "x"'}, "[http] unknown key 'hots'"),
        ("", {"threads": '"two"'}, "warehouse.threads: expected an integer"),
        ('[ingest.feeds.bad]\ncolumns = ["a b"]\n', {}, "not a valid column name"),
        ('[ingest.feeds.bad]\ncolumns = ["a"]\nrequired = ["b"]\n', {}, "not in columns: b"),
        ("", {"format": '"xml"'}, "logging.format"),
        ("", {"enabled": '"yes"'}, "ingest.enabled: expected true or false"),
        ("", {"full_snapshot_every": "0"}, "evidence.full_snapshot_every: must be >= 1"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, extra: str, overrides: dict[str, str], message: str
) -> None:
    path = write_config(tmp_path, extra, **overrides)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)


def test_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, port="99999")
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "http.port" in err
    assert main(["--config", str(tmp_path / "missing.toml"), "status"]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[ingest.feeds."evil\\n"]\ncolumns = ["a"]\n', "ingest.feeds: not a valid feed name"),
        ('[ingest.feeds.bad]\ncolumns = ["a\\n"]\n', "ingest.feeds.bad: not a valid column"),
        ('[ingest.feeds.bad]\ncolumns = ["a"]\nkey = ["a\\n"]\n', "ingest.feeds.bad: not a"),
        ('[[alerting.rules]]\nname = "late\\n"\nkind = "run_failed"\n', "rule name 'late\\n'"),
    ],
)
def test_trailing_newline_in_an_identifier_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, key: str
) -> None:
    """``$`` matches before a final newline: identifiers are matched whole instead."""
    path = write_config(tmp_path, extra)
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err  # one line
    assert err.startswith("monitor: config error: ") and key in err, err


def test_monitor_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    monkeypatch.setenv("MONITOR_CONFIG", str(path))
    assert main(["status", "--json"]) == 0
    assert '"runs": []' in capsys.readouterr().out


def test_bad_dbt_project_dir(tmp_path: Path) -> None:
    path = write_config(tmp_path, project_dir=f'"{tmp_path / "nope"}"')
    with pytest.raises(ConfigError, match=r"dbt\.project_dir"):
        load_config(path)
