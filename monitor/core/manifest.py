"""What the monitor knows about a dbt project, read from ``target/manifest.json``.

Nothing here names a model: layers, grain, materialization and lineage come from the
manifest (sources and seeds are nodes too, layer ``raw``); the rules are in
docs/contracts.md (dbt project).
"""

from __future__ import annotations

import fnmatch
import heapq
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.core.config import Config

__all__ = ["LAYER_ORDER", "DataTest", "ModelInfo", "Project", "load_manifest", "parse_manifest"]

#: Rank of each known layer in the flow raw → fct; anything else sorts last.
LAYER_ORDER: dict[str, int] = {"raw": 0, "stg": 1, "int": 2, "fct": 3}

_NODE_TYPES = frozenset({"model", "seed", "snapshot"})
_PREFIX_LAYERS = (("stg_", "stg"), ("int_", "int"), ("fct_", "fct"))
_FOLDER_LAYERS = {"staging": "stg", "intermediate": "int", "marts": "fct", "mart": "fct"}
_TABLE_MATERIALIZATIONS = frozenset({"table", "incremental"})


@dataclass(frozen=True)
class ModelInfo:
    """One relation the monitor can observe: a model, seed, snapshot or source."""

    unique_id: str
    name: str
    resource_type: str  # model | seed | snapshot | source
    database: str | None
    schema: str
    identifier: str
    layer: str
    grain: tuple[str, ...] = ()
    materialization: str = "view"
    is_incremental: bool = False
    partition_column: str | None = None
    parents: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # columns declared in YAML (may be incomplete)
    package: str = ""

    @property
    def relation(self) -> tuple[str | None, str, str]:
        """``(database, schema, identifier)`` of the warehouse relation."""
        return (self.database, self.schema, self.identifier)

    @property
    def is_relation(self) -> bool:
        """False for ephemeral models, which exist only as CTEs."""
        return self.materialization != "ephemeral"


@dataclass(frozen=True)
class DataTest:
    """One generic data test of the project (``unique``, ``not_null``, ...) on one node."""

    unique_id: str
    name: str
    node: str  # the unique_id of the node it tests
    kind: str  # the generic test's name: unique, not_null, relationships, ...
    #: the columns its column argument reads: one name, or each name of a concatenation
    #: such as ``a || ':' || b``; () for any other expression
    columns: tuple[str, ...]
    where: str | None  # its ``where`` config: which rows it reads (None: all)
    severity: str  # "error" | "warn"
    stores_failures: bool = False
    #: ``relationships``: the model named by its ``to`` (a ``ref``; None otherwise) and field
    to: tuple[str, str] | None = None


@dataclass(frozen=True)
class Project:
    """The observable part of a dbt project and its lineage graph."""

    name: str
    models: Mapping[str, ModelInfo]  # models, seeds and snapshots by unique_id
    sources: Mapping[str, ModelInfo]  # sources by unique_id
    tests: Mapping[str, DataTest] = field(default_factory=dict)  # generic tests by unique_id

    @property
    def nodes(self) -> dict[str, ModelInfo]:
        """Every node (sources first) by unique_id."""
        return {**self.sources, **self.models}

    def node(self, uid: str) -> ModelInfo:
        """The node with this unique_id (KeyError if unknown)."""
        found = self.models.get(uid) or self.sources.get(uid)
        if found is None:
            raise KeyError(uid)
        return found

    def parents(self, uid: str) -> list[ModelInfo]:
        """Direct upstream nodes of ``uid``."""
        return [self.node(p) for p in self.node(uid).parents]

    def children(self, uid: str) -> list[ModelInfo]:
        """Direct downstream nodes of ``uid``, in lineage order."""
        self.node(uid)  # KeyError for unknown ids, like parents()
        return [n for n in self.lineage() if uid in n.parents]

    def by_name(self, name: str) -> ModelInfo:
        """Look a node up by name; a source also by its bare table name if unambiguous."""
        nodes = self.nodes.values()
        exact = [n for n in nodes if n.name == name]
        if not exact:
            exact = [n for n in nodes if n.resource_type == "source" and n.identifier == name]
        if len(exact) != 1:
            reason = "unknown" if not exact else "ambiguous"
            raise KeyError(f"{reason} model name {name!r}")
        return exact[0]

    def ancestors(self, uid: str) -> list[ModelInfo]:
        """Every node upstream of ``uid`` (not itself), in lineage order."""
        seen: set[str] = set()
        todo = list(self.node(uid).parents)
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(self.node(p).parents)
        return [n for n in self.lineage() if n.unique_id in seen]

    def lineage(self) -> list[ModelInfo]:
        """All nodes in topological order (parents before children, raw → fct).

        Ties are broken by layer rank, then unique_id, so the order is stable.
        """
        nodes = self.nodes
        pending = {uid: len(n.parents) for uid, n in nodes.items()}
        kids: dict[str, list[str]] = {uid: [] for uid in nodes}
        for uid, n in nodes.items():
            for p in n.parents:
                kids[p].append(uid)
        heap = [(_rank(nodes[u]), u) for u, k in pending.items() if k == 0]
        heapq.heapify(heap)
        out: list[ModelInfo] = []
        while heap:
            _, uid = heapq.heappop(heap)
            out.append(nodes[uid])
            for kid in kids[uid]:
                pending[kid] -= 1
                if pending[kid] == 0:
                    heapq.heappush(heap, (_rank(nodes[kid]), kid))
        if len(out) != len(nodes):  # dbt forbids cycles; guard against a broken file
            raise ValueError("cycle in manifest lineage")
        return out


def load_manifest(target_path: Path, layers: Mapping[str, str] | None = None) -> Project:
    """Read ``<target_path>/manifest.json`` (or the file itself if given a file).

    ``layers``: the ``[layers]`` config (glob of model name or path → layer)."""
    path = target_path if target_path.is_file() else target_path / "manifest.json"
    with path.open(encoding="utf-8") as fh:
        return parse_manifest(json.load(fh), layers)


def parse_manifest(data: Mapping[str, Any], layers: Mapping[str, str] | None = None
                   ) -> Project:
    """Build a :class:`Project` from a parsed manifest document."""
    raw_nodes: dict[str, Mapping[str, Any]] = {
        uid: n
        for uid, n in data.get("nodes", {}).items()
        if n.get("resource_type") in _NODE_TYPES and _enabled(n)
    }
    raw_sources: dict[str, Mapping[str, Any]] = {
        uid: s for uid, s in data.get("sources", {}).items() if _enabled(s)
    }
    known = set(raw_nodes) | set(raw_sources)
    tests = _tests_by_node(data.get("nodes", {}).values())
    read = {p for n in raw_nodes.values() if n.get("resource_type") == "model"
            for p in n.get("depends_on", {}).get("nodes", [])}
    rules = _LayerRules(dict(layers or {}), frozenset(read))
    models = {uid: _node_info(n, known, tests.get(uid, []), rules)
              for uid, n in raw_nodes.items()}
    sources = {uid: _source_info(s, tests.get(uid, [])) for uid, s in raw_sources.items()}
    project = str(data.get("metadata", {}).get("project_name") or "")
    data_tests = {str(t["unique_id"]): _data_test(t, uid)
                  for uid, ts in tests.items() for t in ts if _enabled(t)}
    return Project(name=project, models=models, sources=sources, tests=data_tests)


def _rank(node: ModelInfo) -> int:
    return LAYER_ORDER.get(node.layer, len(LAYER_ORDER))


def _enabled(node: Mapping[str, Any]) -> bool:
    return bool(node.get("config", {}).get("enabled", True))


def _meta(node: Mapping[str, Any]) -> dict[str, Any]:
    """Merged meta; ``config.meta`` wins (dbt ≥ 1.10 puts meta under config)."""
    merged: dict[str, Any] = {}
    for part in (node.get("source_meta"), node.get("meta"), node.get("config", {}).get("meta")):
        if isinstance(part, Mapping):
            merged.update(part)
    return merged


@dataclass(frozen=True)
class _LayerRules:
    """What a model's layer is inferred from when its meta does not say."""

    globs: dict[str, str]  # ``[layers]`` config: glob of name or file path -> layer
    read: frozenset[str] = frozenset()  # unique_ids some model depends on


def _layer(name: str, resource_type: str, meta: Mapping[str, Any]) -> str:
    if isinstance(meta.get("layer"), str) and meta["layer"]:
        return str(meta["layer"])
    if resource_type in ("source", "seed"):
        return "raw"
    return _prefix_layer(name) or "other"


def _prefix_layer(name: str) -> str | None:
    for prefix, layer in _PREFIX_LAYERS:
        if name.startswith(prefix):
            return layer
    return None


def _model_layer(node: Mapping[str, Any], meta: Mapping[str, Any], rules: _LayerRules,
                 materialization: str) -> str:
    """meta, config globs, folder, prefix, then materialization (docs/contracts.md)."""
    name, rtype = str(node["name"]), str(node["resource_type"])
    if (isinstance(meta.get("layer"), str) and meta["layer"]) or rtype in ("source", "seed"):
        return _layer(name, rtype, meta)
    path = str(node.get("original_file_path") or "")
    for pattern, layer in rules.globs.items():
        if fnmatch.fnmatchcase(name, pattern) or (path and fnmatch.fnmatchcase(path, pattern)):
            return layer
    folders = [str(f) for f in (node.get("fqn") or [])[1:-1]]
    for folder in reversed(folders):  # the innermost known folder wins
        if folder.lower() in _FOLDER_LAYERS:
            return _FOLDER_LAYERS[folder.lower()]
    by_prefix = _prefix_layer(name)
    if by_prefix:
        return by_prefix
    leaf = str(node["unique_id"]) not in rules.read
    if rtype == "model" and materialization in _TABLE_MATERIALIZATIONS and leaf:
        return "fct"  # a table nothing else reads is what consumers read: a mart
    return "other"


def _as_list(value: Any) -> list[str]:
    """A config value that may be a string or a list of strings, as a list."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, Sequence):
        return [str(v) for v in value if isinstance(v, str) and v]
    return []


def _tests_by_node(nodes: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Generic test nodes grouped by the node they test."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for n in nodes:
        if n.get("resource_type") != "test" or not n.get("test_metadata"):
            continue
        target = n.get("attached_node")
        if not target:  # source tests have no attached_node; use their only dependency
            deps = n.get("depends_on", {}).get("nodes", [])
            target = deps[0] if len(deps) == 1 else None
        if target:
            out.setdefault(str(target), []).append(n)
    return out


_NAME = r'(?:[A-Za-z_][A-Za-z0-9_]*|"[^"]+")'
_CONCAT_PART = re.compile(rf"\s*(?:({_NAME})|'[^']*')\s*")
_REF = re.compile(r"""\s*ref\(\s*['"]([^'"]+)['"]\s*\)\s*""")


def column_names(expression: str) -> tuple[str, ...]:
    """The columns a test's column argument reads: a name, or the names of a
    concatenation of names and string literals (``a || ':' || b``); () otherwise."""
    names: list[str] = []
    for part in expression.split("||"):
        m = _CONCAT_PART.fullmatch(part)
        if m is None:
            return ()
        if m.group(1):
            names.append(m.group(1).strip('"'))
    return tuple(names)


def _data_test(t: Mapping[str, Any], node: str) -> DataTest:
    meta = t["test_metadata"]
    kwargs = meta.get("kwargs", {})
    config = t.get("config", {})
    column = t.get("column_name") or kwargs.get("column_name")
    if meta.get("name") == "unique_combination_of_columns":
        columns = tuple(_as_list(kwargs.get("combination_of_columns")))
    else:
        columns = column_names(column) if isinstance(column, str) else ()
    where = config.get("where")
    ref = _REF.fullmatch(str(kwargs.get("to") or ""))
    field_name = kwargs.get("field")
    return DataTest(
        unique_id=str(t["unique_id"]), name=str(t["name"]), node=node,
        kind=str(meta.get("name") or ""), columns=columns,
        where=str(where) if where else None,
        severity=str(config.get("severity") or "error").lower(),
        stores_failures=bool(config.get("store_failures")),
        to=(ref.group(1), str(field_name)) if ref and isinstance(field_name, str) else None,
    )


def _grain_from_tests(tests: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    flags: dict[str, set[str]] = {}
    for t in tests:
        meta = t["test_metadata"]
        kwargs = meta.get("kwargs", {})
        if meta.get("name") == "unique_combination_of_columns":
            combo = _as_list(kwargs.get("combination_of_columns"))
            if combo:
                return combo
        col = t.get("column_name") or kwargs.get("column_name")
        if meta.get("name") in ("unique", "not_null") and isinstance(col, str):
            flags.setdefault(col, set()).add(str(meta["name"]))
    keys = [c for c, f in flags.items() if f == {"unique", "not_null"}]
    order = {c: i for i, c in enumerate(columns)}
    return sorted(keys, key=lambda c: (order.get(c, len(order)), c))


def _grain_from_constraints(node: Mapping[str, Any]) -> list[str]:
    for con in node.get("constraints") or []:
        if con.get("type") == "primary_key":
            return _as_list(con.get("columns"))
    cols = node.get("columns") or {}
    return [
        name
        for name, col in cols.items()
        if any(c.get("type") == "primary_key" for c in col.get("constraints") or [])
    ]


def _grain(
    node: Mapping[str, Any], meta: Mapping[str, Any], tests: Sequence[Mapping[str, Any]]
) -> tuple[str, ...]:
    columns = list((node.get("columns") or {}).keys())
    for candidate in (
        _as_list(meta.get("grain")),
        _as_list(node.get("config", {}).get("unique_key")),
        _grain_from_constraints(node),
        _grain_from_tests(tests, columns),
    ):
        if candidate:
            return tuple(candidate)
    return ()


def _partition(node: Mapping[str, Any], meta: Mapping[str, Any]) -> str | None:
    for value in (
        meta.get("partition_column"),
        meta.get("partition_by"),
        node.get("config", {}).get("partition_by"),
    ):
        if isinstance(value, Mapping):
            value = value.get("field")
        names = _as_list(value)
        if names:
            return names[0]
    return None


def _node_info(
    node: Mapping[str, Any], known: set[str], tests: Sequence[Mapping[str, Any]],
    rules: _LayerRules,
) -> ModelInfo:
    meta = _meta(node)
    config = node.get("config", {})
    rtype = str(node["resource_type"])
    name = str(node["name"])
    materialization = str(config.get("materialized") or rtype)
    deps = node.get("depends_on", {}).get("nodes", [])
    return ModelInfo(
        unique_id=str(node["unique_id"]),
        name=name,
        resource_type=rtype,
        database=node.get("database"),
        schema=str(node["schema"]),
        identifier=str(node.get("alias") or name),
        layer=_model_layer(node, meta, rules, materialization),
        grain=_grain(node, meta, tests),
        materialization=materialization,
        is_incremental=materialization == "incremental",
        partition_column=_partition(node, meta),
        # Keep only observable parents; macros, tests and disabled nodes are not lineage.
        parents=tuple(dict.fromkeys(d for d in deps if d in known)),
        columns=tuple((node.get("columns") or {}).keys()),
        package=str(node.get("package_name") or ""),
    )


def _source_info(src: Mapping[str, Any], tests: Sequence[Mapping[str, Any]]) -> ModelInfo:
    meta = _meta(src)
    return ModelInfo(
        unique_id=str(src["unique_id"]),
        name=f"{src['source_name']}.{src['name']}",
        resource_type="source",
        database=src.get("database"),
        schema=str(src["schema"]),
        identifier=str(src.get("identifier") or src["name"]),
        layer=_layer(str(src["name"]), "source", meta),
        grain=_grain(src, meta, tests),
        materialization="source",
        is_incremental=False,
        partition_column=_partition(src, meta),
        parents=(),
        columns=tuple((src.get("columns") or {}).keys()),
        package=str(src.get("package_name") or ""),
    )


def lookback_batches(cfg: Config) -> int:
    """dbt's ``lookback_batches``: how far below its watermark an incremental run reads."""
    value = cfg.dbt.vars.get("lookback_batches")
    if value is None:
        try:
            import yaml  # type: ignore[import-untyped]  # dbt-core's dependency

            doc = yaml.safe_load((cfg.dbt.project_dir / "dbt_project.yml").read_text())
            value = (doc.get("vars") or {}).get("lookback_batches", 0)
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            value = 0
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0
