"""PostgreSQL looks a large table's touched keys up by key (``Backend.key_lookup``), and
the checks built on it see exactly what the semi join sees: a duplicate next to an
untouched old row, a restated row, a published key the model missed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.core.manifest import ModelInfo
from monitor.observe.carry import _touched_duplicates
from monitor.quality.queries import touched_keys
from monitor.quality.suites import load_suite
from monitor.quality.validator import Validator
from monitor.stages import reconcile
from monitor.warehouse.connection import backend_of_url
from monitor.warehouse.postgres import LOOKUP_ROWS_PER_KEY

pytestmark = pytest.mark.postgres

OLD_ROWS = 20_000
SEQS = ["_publish_seq", "_enriched_publish_seq"]


@pytest.fixture
def pg(pg_database: str) -> Iterator[sa.Engine]:
    """``main.fct``: 20,000 rows of an old batch (seq 1), and what a new batch (seq 5)
    touched: 10 new keys, a new version of ``K00007`` next to its old row (a
    duplicate), and ``K00011`` restated (only its enriched seq raised). ``main.stg``:
    the new batch's keys, plus ``N99`` that never reached the table."""
    engine = sa.create_engine(pg_database, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("create schema main")
        conn.exec_driver_sql(
            "create table main.fct as select 'K' || lpad(g::text, 5, '0') as claim_id, "
            "1::bigint as _publish_seq, 1::bigint as _enriched_publish_seq, g as amount "
            f"from generate_series(1, {OLD_ROWS}) g")
        conn.exec_driver_sql(
            "insert into main.fct select 'N' || g, 5, 5, g from generate_series(1, 10) g "
            "union all select 'K00007', 5, 5, 7")
        conn.exec_driver_sql("update main.fct set _enriched_publish_seq = 5 "
                             "where claim_id = 'K00011'")
        for column in ("claim_id", *SEQS):
            conn.exec_driver_sql(f"create index on main.fct ({column})")
        conn.exec_driver_sql("create table main.stg as select claim_id, _publish_seq "
                             "from main.fct where _publish_seq = 5 "
                             "union all select 'N99', 5")
        conn.exec_driver_sql("analyze main.fct")
        conn.exec_driver_sql("analyze main.stg")
    yield engine
    engine.dispose()


def _keys(after: int = 1) -> sa.Select[tuple[str]]:
    t = sa.table("fct", *(sa.column(c) for c in ("claim_id", *SEQS)), schema="main")
    return touched_keys(t, "claim_id", SEQS, after)


def test_a_lookup_only_where_the_keys_are_few_against_the_table(pg: sa.Engine) -> None:
    backend = backend_of_url(pg.url.render_as_string(hide_password=False))
    with pg.connect() as conn:
        assert sorted(conn.execute(_keys()).scalars()) == [
            "K00007", "K00011", *sorted(f"N{g}" for g in range(1, 11))]
        assert backend.key_lookup(conn, ("main", "fct"), "claim_id", _keys()) is not None
        # Every row touched: more keys than rows / LOOKUP_ROWS_PER_KEY, the semi join.
        assert backend.key_lookup(conn, ("main", "fct"), "claim_id", _keys(after=0)) is None
        assert OLD_ROWS // LOOKUP_ROWS_PER_KEY > 12
        assert backend.key_lookup(conn, ("main", "no_such_table"), "claim_id", _keys()) is None
        # No index starting with the key: every row would be compared with the array.
        assert backend.key_lookup(conn, ("main", "fct"), "amount", _keys()) is None


def _node(name: str) -> ModelInfo:
    return ModelInfo(f"model.x.{name}", name, "model", None, "main", name, "fct",
                     grain=("claim_id",), materialization="incremental", is_incremental=True)


def test_the_checks_on_looked_up_keys_see_the_duplicate_and_the_missed_key(
    pg: sa.Engine, tmp_path: Path
) -> None:
    url = pg.url.render_as_string(hide_password=False)
    suite_doc = json.loads(Path("expectations/grain_fct_claims.json").read_text())
    suite_doc["name"], suite_doc["meta"]["monitor"]["model"] = "grain_fct", "fct"
    (tmp_path / "grain_fct.json").write_text(json.dumps(suite_doc))
    suite = load_suite(tmp_path / "grain_fct.json")
    with Validator(url, 5, backend=backend_of_url(url)) as v:
        assert v._key_lookup(suite, 1) is not None
        result = v.run_model_suite(suite, 1)
    unique = next(r for r in result.results if r.check == "key_unique")
    assert not result.success and unique.unexpected_count == 1
    assert unique.unexpected_values == [{"claim_id": "K00007", "row_count": 2}]

    with pg.connect() as conn:
        assert _touched_duplicates(conn, _node("fct"), ["claim_id"], SEQS, 1) == 1
        assert _touched_duplicates(conn, _node("fct"), ["claim_id"], SEQS, 5) == 0
        pair = reconcile.Pair(_node("fct"), "claim_id", _node("stg"))
        found = reconcile.check_pair(conn, pair, 1)
    (r,) = found.results
    # K00007's old row is older than its published version; N99 never arrived.
    assert r.observed_value == {"published_keys": 12, "missed": 2, "parent": "stg"}
    assert r.unexpected_values == [
        {"key": "K00007", "published_seq": 5, "model_seq": 1},
        {"key": "N99", "published_seq": 5, "model_seq": None}]
