"""The reproduce commands build through a generated profile: a user profile that does
not read where to write from the environment (a fixed path or schema) must not turn a
pasted ``--full-refresh`` into a rebuild of production."""

from __future__ import annotations

from pathlib import Path

import yaml

from monitor.core.config import load_config
from monitor.triage.isolation import SCRATCH_TARGET, write_scratch_profile
from monitor.warehouse.duckdb import DuckDBBackend
from monitor.warehouse.postgres import PostgresBackend

from .conftest import REPO, write_config


def _fixed_path_profile(tmp: Path, warehouse: Path) -> Path:
    """The repo's profile with the DuckDB path written out, and a secret in it."""
    text = (REPO / "pipeline" / "profiles.yml").read_text()
    text = text.replace("\"{{ env_var('MONITOR_WAREHOUSE_PATH') }}\"", f'"{warehouse}"')
    text = text.replace("      schema: main\n", "      schema: main\n"
                        "      extensions_token: hunter2\n", 1)
    profiles = tmp / "user-profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(text)
    return profiles


def test_a_fixed_path_profile_still_rebuilds_in_the_copy(tmp_path: Path) -> None:
    warehouse = (tmp_path / "data" / "warehouse.duckdb").resolve()
    profiles = _fixed_path_profile(tmp_path, warehouse)
    cfg = load_config(write_config(tmp_path, profiles_dir=f'"{profiles}"'))
    changes = DuckDBBackend().scratch_output("dqm_triage_x", "/tmp/triage-x")
    out = tmp_path / "evidence" / "reproduce"
    profile, secrets = write_scratch_profile(cfg, out, changes)
    doc = yaml.safe_load((out / "profiles.yml").read_text())
    output = doc[profile]["outputs"][SCRATCH_TARGET]
    assert doc[profile]["target"] == SCRATCH_TARGET
    assert output["path"] == "/tmp/triage-x.duckdb" != str(warehouse)
    assert output["type"] == "duckdb"
    # the secret is a variable in the file, its value only in what the caller sets
    assert "hunter2" not in (out / "profiles.yml").read_text()
    assert output["extensions_token"] == "{{ env_var('DQM_TRIAGE_DBT_EXTENSIONS_TOKEN') }}"
    assert secrets == {"DQM_TRIAGE_DBT_EXTENSIONS_TOKEN": "hunter2"}


def test_postgres_scratch_output_is_the_schema() -> None:
    assert PostgresBackend().scratch_output("dqm_triage_r1", "/tmp/x") == {
        "schema": "dqm_triage_r1"}
