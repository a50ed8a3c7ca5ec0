"""The ``monitor`` command line: argparse errors and the exit codes of ``monitor once``.

Every case goes through ``monitor.cli.main`` with real config files, a real DuckDB
warehouse and real dbt (issue 17, item 2).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.cli import main
from monitor.core.config import load_config
from monitor.warehouse.lock import cycle_lock

from .conftest import write_config
from .test_any_project import _project


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)`` expecting argparse to exit 2; return its stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize(
    ("argv", "usage", "message"),
    [
        (["frobnicate"], "usage: monitor ", "invalid choice: 'frobnicate'"),
        (["release"], "usage: monitor release ",
         "the following arguments are required: batch, --reason"),
        (["reject", "claims-1"], "usage: monitor reject ",
         "the following arguments are required: --reason"),
        (["resume"], "usage: monitor resume ", "the following arguments are required: --reason"),
        (["rollback", "--reason", "x"], "usage: monitor rollback ",
         "the following arguments are required: --to"),
        (["generate", "--out", "x", "--start", "2026-01-01", "--claims-per-day", "5"],
         "usage: monitor generate ", "the following arguments are required: --days"),
        (["once", "--as-of", "2026-02-30"], "usage: monitor once ",
         "argument --as-of: invalid fromisoformat value: '2026-02-30'"),
        (["once", "--as-of", "yesterday"], "usage: monitor once ",
         "argument --as-of: invalid fromisoformat value: 'yesterday'"),
        (["demo", "--days", "0"], "usage: monitor demo ",
         "argument --days: must be a positive integer, got 0"),
        (["demo", "--days", "seven"], "usage: monitor demo ",
         "argument --days: invalid _positive value: 'seven'"),
        (["triage", "--format", "pdf"], "usage: monitor triage ",
         "argument --format: invalid choice: 'pdf'"),
    ],
)
def test_argparse_errors_exit_2_with_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], usage: str, message: str
) -> None:
    err = _usage_error(argv, capsys)
    lines = err.splitlines()
    assert lines[0].startswith(usage), err
    assert lines[-1].startswith("monitor") and ": error: " in lines[-1], err
    assert message in lines[-1], err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: monitor ") and "COMMAND" in out


# -- monitor once: exit codes 1, 3, 4 and the reason on the last stderr line ------------


def _shop_config(tmp_path: Path) -> tuple[Path, Path]:
    """The small foreign project of test_any_project (ingest off); config and project."""
    proj = _project(tmp_path)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[warehouse]\npath = "{tmp_path / "data" / "shop.duckdb"}"\n'
        f'[state]\nurl = "sqlite:///{tmp_path / "data" / "state.db"}"\n'
        f'[dbt]\nproject_dir = "{proj}"\nprofiles_dir = "{proj}"\n'
        f'target_path = "{tmp_path / "target"}"\nlog_path = "{tmp_path / "logs"}"\n'
        "[ingest]\nenabled = false\n[validation]\nenabled = false\n"
    )
    return cfg, proj


@pytest.mark.slow
def test_once_exit_1_when_a_model_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, proj = _shop_config(tmp_path)
    (proj / "models" / "staging" / "stg_orders.sql").write_text(
        "select order_id, customer, amount from {{ ref('raw_orders') }} where\n"  # SQL error
    )
    assert main(["--config", str(cfg), "once"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # The breaker trips on a failed run: its line is last and carries the failure.
    assert last.startswith("monitor: circuit breaker: downstream paused (run "), last
    assert "failed: dbt build failed: stg_orders" in last, last


@pytest.mark.slow
def test_once_exit_1_reason_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the breaker off, the last line is the run's own reason."""
    cfg, proj = _shop_config(tmp_path)
    cfg.write_text(cfg.read_text() + "[scheduler]\npause_on_critical = false\n")
    (proj / "models" / "marts" / "fct_orders.sql").write_text(
        "select * from {{ ref('stg_orders') }} where no_such_column > 0\n"
    )
    assert main(["--config", str(cfg), "once"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "monitor: failed: dbt build failed: fct_orders", err[-5:]


@pytest.mark.slow
def test_once_exit_3_when_a_file_is_quarantined(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    cfg = load_config(path)
    bad = Path(cfg.ingest.landing_dir) / "claims" / "2026-03-02" / "claims.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("this,is,not,the,claims,header\n1,2,3,4,5,6\n")
    assert main(["--config", str(path), "once"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2] == ("monitor: held: 1 file(s) quarantined whole; "
                       "2 row(s) quarantined"), err[-5:]
    assert err[-1] == ("monitor: circuit breaker: downstream paused (file(s) quarantined "
                       "whole: claims.csv); `monitor resume --reason TEXT` lifts it"), err[-5:]


def test_once_exit_4_when_another_cycle_holds_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = _shop_config(tmp_path)
    loaded = load_config(cfg)
    with cycle_lock(loaded):
        assert main(["--config", str(cfg), "once"]) == 4
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        f"monitor: another cycle is running on {loaded.warehouse.path}")
    assert "SUCCESS" not in captured.out
    assert not (tmp_path / "target" / "run_results.json").exists()  # dbt never ran
