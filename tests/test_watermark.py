"""The touched-rows watermark in the state store (monitor.store.watermark): what the last
successful build merged, moved back by a rollback, never above the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.store import state, watermark


@pytest.fixture
def st(tmp_path: Path) -> sa.Engine:
    engine = state.open_state(f"sqlite:///{tmp_path / 'state.db'}")
    yield engine
    engine.dispose()


def test_without_a_recorded_build_the_ledger_maximum_before_the_gate(st: sa.Engine) -> None:
    assert watermark.current(st) is None
    assert watermark.touched_after(st, 0) == 0
    assert watermark.touched_after(st, 7) == 7  # a state store new to an old warehouse


def test_a_build_advances_it_and_later_publications_stay_touched(st: sa.Engine) -> None:
    watermark.advance(st, "r1", 5)
    # batches 6 and 7 were published since (a release, a gate whose build failed):
    # the ledger is at 7 before the next gate, the touched rows still start above 5
    assert watermark.touched_after(st, 7) == 5
    assert watermark.merged_by(st, "r1") == 5 and watermark.merged_by(st, "r2") is None
    watermark.advance(st, "r2", 9)
    assert watermark.current(st) == 9
    # a warehouse rebuilt from scratch under this state store: never above its ledger
    assert watermark.touched_after(st, 2) == 2


def test_a_rollback_moves_it_back_never_up(st: sa.Engine) -> None:
    watermark.advance(st, "r1", 5)
    watermark.advance(st, "r2", 9)
    assert watermark.move_back(st, "r1", 5) == 5
    assert watermark.touched_after(st, 12) == 5
    assert watermark.move_back(st, "r2", 9) == 5  # a rollback never raises it
    assert watermark.merged_by(st, "r2") == 9  # what r2's build merged is still known
