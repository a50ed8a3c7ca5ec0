"""manifest.py against a real manifest written by ``dbt parse`` of a tiny project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitor.core.manifest import Project, load_manifest

FILES: dict[str, str] = {
    "dbt_project.yml": """
name: tiny
version: "1.0"
config-version: 2
profile: tiny
""",
    "profiles.yml": """
tiny:
  target: dev
  outputs:
    dev:
      type: duckdb
      path: "{warehouse}"
""",
    "seeds/people.csv": "person_id,name\n1,a\n2,b\n",
    "seeds/schema.yml": """
version: 2
seeds:
  - name: people
    columns:
      - name: person_id
        data_tests: [unique, not_null]
""",
    "models/sources.yml": """
version: 2
sources:
  - name: shop
    schema: raw
    tables:
      - name: orders
        columns:
          - name: order_id
            data_tests: [unique, not_null]
          - name: note
            data_tests: [not_null]
""",
    # A staging model without a source: grain comes from its unique + not_null tests.
    "models/staging/stg_people.sql": "select person_id, name from {{ ref('people') }}\n",
    "models/staging/schema.yml": """
version: 2
models:
  - name: stg_people
    columns:
      - name: name
        data_tests: [not_null]
      - name: person_id
        data_tests: [unique, not_null]
""",
    # No prefix: the layer comes from meta only; grain from unique_key.
    "models/enriched_orders.sql": """
{{ config(materialized='table', unique_key='order_id', meta={'layer': 'int'}) }}
select o.order_id, p.person_id from {{ source('shop', 'orders') }} o
cross join {{ ref('stg_people') }} p
""",
    "models/marts/fct_orders.sql": """
{{ config(materialized='incremental', unique_key=['order_id', 'person_id']) }}
select * from {{ ref('enriched_orders') }}
""",
    "models/marts/schema.yml": """
version: 2
models:
  - name: fct_orders
    config:
      meta: {layer: fct, grain: [order_id], partition_column: order_date}
""",
    "models/misc/helper.sql": "{{ config(materialized='ephemeral') }}\nselect 1 as x\n",
    # Marts named as jaffle_shop names them: by folder, or a table nothing reads.
    "models/marts/order_totals.sql": "{{ config(materialized='table') }}\n"
                               "select * from {{ ref('stg_people') }}\n",
    "models/customers.sql": "{{ config(materialized='table') }}\n"
                            "select * from {{ ref('stg_people') }}\n",
    "models/reporting/sales_report.sql": "select * from {{ ref('stg_people') }}\n",
}
EXTRA = {"order_totals", "customers", "sales_report"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dbt.cli.main import dbtRunner

    root = tmp_path_factory.mktemp("tiny")
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("{warehouse}", str(root / "wh.duckdb")))
    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    res = dbtRunner().invoke(
        ["parse", "--project-dir", str(root), "--profiles-dir", str(root), "--quiet"]
    )
    assert res.success, res.exception
    return root / "target"


@pytest.fixture(scope="module")
def project(target: Path) -> Project:
    return load_manifest(target)


def test_nodes_and_layers(project: Project) -> None:
    layers = {n.name: n.layer for n in project.nodes.values()}
    assert layers == {
        "people": "raw",
        "shop.orders": "raw",
        "stg_people": "stg",
        "enriched_orders": "int",
        "fct_orders": "fct",
        "helper": "other",
        "order_totals": "fct",  # marts/ folder
        "customers": "fct",  # a table no model reads
        "sales_report": "other",  # a view in a folder the rules do not know
    }
    assert set(project.sources) == {"source.tiny.shop.orders"}
    assert project.by_name("people").resource_type == "seed"


def test_relation_and_materialization(project: Project) -> None:
    fct = project.by_name("fct_orders")
    assert fct.unique_id == "model.tiny.fct_orders"
    assert fct.relation == ("wh", "main", "fct_orders")
    assert fct.materialization == "incremental" and fct.is_incremental
    assert fct.partition_column == "order_date"
    stg = project.by_name("stg_people")
    assert (stg.materialization, stg.is_incremental, stg.partition_column) == ("view", False, None)
    src = project.by_name("orders")  # bare table name resolves to the source
    assert src.relation == ("wh", "raw", "orders") and src.materialization == "source"
    assert not project.by_name("helper").is_relation


def test_grain_precedence(project: Project) -> None:
    assert project.by_name("fct_orders").grain == ("order_id",)  # meta beats unique_key
    assert project.by_name("enriched_orders").grain == ("order_id",)  # unique_key
    assert project.by_name("stg_people").grain == ("person_id",)  # tests; not_null alone no
    assert project.by_name("people").grain == ("person_id",)  # seed tests
    assert project.by_name("shop.orders").grain == ("order_id",)  # source tests


def test_lineage_parents_children(project: Project) -> None:
    order = [n.name for n in project.lineage() if n.name not in {"helper", *EXTRA}]
    assert order.index("people") < order.index("stg_people") < order.index("enriched_orders")
    assert order.index("shop.orders") < order.index("enriched_orders") < order.index("fct_orders")
    assert order[-1] == "fct_orders"
    enriched = project.by_name("enriched_orders").unique_id
    assert sorted(n.name for n in project.parents(enriched)) == ["shop.orders", "stg_people"]
    assert [n.name for n in project.children(enriched)] == ["fct_orders"]
    assert project.by_name("stg_people").layer == "stg"  # read by others: not a hint
    assert project.by_name("people").parents == ()
    with pytest.raises(KeyError):
        project.by_name("no_such_model")


def test_ancestors_walk_every_level_in_lineage_order(project: Project) -> None:
    fct = project.by_name("fct_orders").unique_id
    names = [n.name for n in project.ancestors(fct)]
    assert set(names) >= {"enriched_orders", "stg_people", "people", "shop.orders"}
    assert "fct_orders" not in names
    assert names == [n.name for n in project.lineage() if n.name in names]
    assert project.ancestors(project.by_name("people").unique_id) == []


def test_load_manifest_accepts_file_path(project: Project, tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('{"metadata": {"project_name": "x"}, "nodes": {}}')
    empty = load_manifest(tmp_path / "m.json")
    assert empty.name == "x" and empty.lineage() == []


def test_layers_config_globs_beat_folder_and_hints_not_meta(target: Path) -> None:
    """``[layers]``: a glob of a model's name or file path; meta.layer still wins."""
    rules = {"models/reporting/*": "fct", "customers": "int", "enriched_*": "stg"}
    layers = {n.name: n.layer for n in load_manifest(target, rules).nodes.values()}
    assert layers["sales_report"] == "fct"  # by path
    assert layers["customers"] == "int"  # by name, before the materialization hint
    assert layers["enriched_orders"] == "int"  # meta.layer wins over the config
    assert layers["order_totals"] == "fct" and layers["people"] == "raw"
