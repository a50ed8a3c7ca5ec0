"""cost.py: exact cost arithmetic."""

from __future__ import annotations

from datetime import datetime

import pytest

from monitor.core.sections import CostConfig
from monitor.observe.cost import estimate
from monitor.observe.profile import MetricPoint
from monitor.observe.run import model_observations
from monitor.stages.build import DbtResult, NodeResult

CFG = CostConfig()  # 4.0 per hour, 5.0 per TB, 200-byte rows


def test_compute_only() -> None:
    assert estimate(1800, None, None, CFG) == 2.0  # half an hour at 4.0
    assert estimate(0, None, None, CFG) == 0.0


def test_compute_plus_bytes() -> None:
    assert estimate(1800, 2 * 10**12, None, CFG) == 12.0  # 2.0 + 2 TB x 5.0


def test_rows_use_assumed_row_width() -> None:
    # 5e9 rows x 200 B = 1 TB -> 5.0, plus 1 h compute = 4.0
    assert estimate(3600, None, 5 * 10**9, CFG) == 9.0
    wide = CostConfig(avg_row_bytes=400)
    assert estimate(3600, None, 5 * 10**9, wide) == 14.0
    # Known bytes beat the row estimate.
    assert estimate(3600, 10**12, 10**12, CFG) == 9.0


def test_cores_and_tib() -> None:
    per_core = CostConfig(compute_per_hour=0.5, cores=8)
    assert estimate(900, None, None, per_core) == 1.0  # 0.25 h x 8 cores x 0.5
    tib = CostConfig(per_tb_scanned=6.25, bytes_per_tb=2**40)
    assert estimate(0, 2**41, None, tib) == 12.5


def test_validation() -> None:
    with pytest.raises(ValueError):
        estimate(-1, None, None, CFG)
    with pytest.raises(ValueError):
        estimate(1, -5, None, CFG)
    with pytest.raises(ValueError):
        CostConfig(cores=0)
    with pytest.raises(ValueError):
        CostConfig(compute_per_hour=-1)


def test_model_cost_uses_the_backends_stored_bytes() -> None:
    """``Backend.relation_bytes`` (PostgreSQL: pg_table_size) over the model's rows is
    the row width the rows a run wrote are costed at; without it, ``avg_row_bytes``."""
    node = NodeResult("model.p.fct", "fct", "model", "success", 3600.0, 10**9, "", None)
    dbt = DbtResult("build", True, [node])
    rows = [MetricPoint("r", "fct", "other", "row_count", 2 * 10**9, datetime(2026, 1, 1))]
    # 4e12 bytes stored in 2e9 rows: 2,000 B a row; 1e9 rows written = 2 TB -> 10.0 + 4.0
    (obs,) = model_observations(None, dbt, rows, CFG, {"fct": 4 * 10**12})
    assert obs.cost == 14.0
    (obs,) = model_observations(None, dbt, rows, CFG)  # 1e9 x 200 B = 0.2 TB -> 1.0 + 4.0
    assert obs.cost == 5.0
