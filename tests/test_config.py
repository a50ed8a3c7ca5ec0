"""Config validation: one clear message naming the key, exit code 2."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.core.config import ConfigError, load_config
from monitor.warehouse.connection import backend_for

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


_SINK = '[[alerting.sinks]]\nname = "{name}"\nkind = "{kind}"\n'


@pytest.mark.parametrize(
    ("extra", "overrides", "line"),
    [
        # Unknown keys, wrong types, bad values: the documented errors.
        ('[tuning]\nx = 1\n', {}, "[top level] unknown key 'tuning' (known: "),
        ("", {"host": '"127.0.0.1"\nhots = "x"'}, "[http] unknown key 'hots' (known: "),
        ("", {"threads": '"two"'}, "warehouse.threads: expected an integer, got a string ('two')"),
        ("", {"enabled": '"yes"'}, "ingest.enabled: expected true or false, got a string ('yes')"),
        ("", {"port": "99999"}, "http.port: must be 0-65535, got 99999"),
        ("", {"format": '"xml"'}, "logging.format: expected 'text' or 'json', got 'xml'"),
        ("", {"full_snapshot_every": "0"}, "evidence.full_snapshot_every: must be >= 1, got 0"),
        ('[ingest.feeds.bad]\ncolumns = ["a"]\nrequired = ["b"]\n', {},
         "ingest.feeds.bad.required: not in columns: b"),
        # Bad paths.
        ("", {"suites_dir": '"/nonexistent/suites"'},
         "validation.suites_dir: not a folder: /nonexistent/suites"),
        ("", {"project_dir": '"/nonexistent/proj"'},
         "dbt.project_dir: no dbt_project.yml in /nonexistent/proj"),
        # Secrets are named by an environment variable, never written into the file.
        (_SINK.format(name="pd", kind="pagerduty") + 'routing_key = "R0UT1NGKEY"\n', {},
         "[alerting.sinks[1]] unknown key 'routing_key' (known: "),
        (_SINK.format(name="pd", kind="pagerduty"), {},
         "[alerting.sinks[1]] sink pd: pagerduty needs routing_key_env"),
        (_SINK.format(name="chat", kind="slack")
         + 'url = "https://hooks.slack.com/services/T0/B0/SECRET"\n', {},
         "[alerting.sinks[1]] sink chat: a Slack webhook URL is a secret; set url_env"),
        (_SINK.format(name="chat", kind="slack") + 'url_env = "not a var"\n', {},
         "[alerting.sinks[1]] sink chat: url_env must name an environment variable, "
         "got 'not a var'"),
        (_SINK.format(name="hook", kind="webhook") + 'url = "ftp://example.org"\n', {},
         "[alerting.sinks[1]] sink hook: url must be http(s)"),
    ],
)
def test_every_config_error_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    extra: str, overrides: dict[str, str], line: str,
) -> None:
    path = write_config(tmp_path, extra, **overrides)
    assert main(["--config", str(path), "status"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert captured.err.startswith("monitor: config error: " + line), captured.err


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("[http]\nport = \n", "Cannot declare ('http',) twice"),
        ("[broken\n", "Expected ']' at the end of a table declaration"),
        ('x = "unterminated\n', "Illegal character '\\n'"),
    ],
)
def test_toml_syntax_error_is_one_line_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str, problem: str
) -> None:
    path = write_config(tmp_path, bad)
    lines = path.read_text().splitlines()
    bad_line = len(lines) - lines[::-1].index(bad.splitlines()[0])  # the appended one
    assert main(["--config", str(path), "once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"monitor: config error: {path}: not valid TOML: {problem}"), err
    assert f"(at line {bad_line}, column " in err, err


def test_literal_secret_is_not_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The error about a literal secret names the key, not the secret."""
    secret = "https://hooks.slack.com/services/T0/B0/VERYSECRET"
    path = write_config(tmp_path, _SINK.format(name="chat", kind="slack") + f'url = "{secret}"\n')
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert "url_env" in err and "VERYSECRET" not in err, err


PG = "postgresql+psycopg2://dbt@db.example:5432/warehouse"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (f'url = "{PG.replace("dbt@", "dbt:hunter2@")}"', "holds a password"),
        (f'url = "{PG.replace("+psycopg2", "+pg8000")}"', "driver 'postgresql+pg8000'"),
        ('url = "postgresql+psycopg2://db.example/warehouse"', "odd user name: ''"),
        ('url = "postgresql+psycopg2://dbt@db.example/"', "odd database name: ''"),
        ('url = "postgresql+psycopg2://dbt@db.example/w;drop"', "odd database name"),
        (f'url = "{PG}"\npassword_env = "PG PASS"', "password_env: not a variable name"),
    ],
)
def test_a_warehouse_url_holds_no_password_and_names_its_database(
    tmp_path: Path, lines: str, message: str
) -> None:
    path = write_config(tmp_path, path=f'"data/warehouse.duckdb"\n{lines}')
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        load_config(path)


def test_the_warehouse_url_picks_the_backend(tmp_path: Path) -> None:
    """``path`` alone is DuckDB as before; a PostgreSQL URL gets its backend and COPY."""
    duck = load_config(write_config(tmp_path))
    assert backend_for(duck.warehouse).bulk_loader == "duckdb_read_csv"
    pg = load_config(write_config(
        tmp_path, path=f'"data/warehouse.duckdb"\nurl = "{PG}"\npassword_env = "PG_PASS"'))
    assert (pg.warehouse.url, pg.warehouse.password_env) == (PG, "PG_PASS")
    assert backend_for(pg.warehouse).bulk_loader == "postgres_copy"
    sqlite = dataclasses.replace(duck.warehouse, url="sqlite:///x.db")
    assert backend_for(sqlite).bulk_loader == ""
