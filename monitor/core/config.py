"""Configuration: one TOML file, validated at start into frozen dataclasses.

Each section maps onto a dataclass by field name and type; an unknown key, a wrong type
or a bad path raises :class:`ConfigError` naming the key. Relative paths resolve
against the folder of the config file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.core.sections import (
    AlertingConfig,
    CostConfig,
    DriftConfig,
    ProfileConfig,
    VolumeConfig,
)

DEFAULT_CONFIG = "config.toml"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: "$" would accept "a\n"


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


@dataclass(frozen=True)
class WarehouseConfig:
    """``[warehouse]``: where the pipeline's tables live.

    path: DuckDB file (the default engine). url: any SQLAlchemy URL instead, e.g.
    ``postgresql+psycopg2://user@host:5432/db``, or a Spark Connect endpoint
    ``sc://host:port`` (then dbt's profile must point at the same warehouse). The URL
    holds no password or token: libpq finds it (PGPASSWORD, .pgpass) or password_env
    names the environment variable that holds it (a Spark Connect token). memory_limit / threads:
    DuckDB settings applied to every connection, the monitor's and dbt's alike.
    """

    path: Path = Path("data/warehouse.duckdb")
    url: str = ""
    password_env: str = ""
    memory_limit: str = "1900MB"
    threads: int = 2

    @property
    def sqlalchemy_url(self) -> str:
        return self.url or f"duckdb:///{self.path}"

    @property
    def is_duckdb(self) -> bool:
        return not self.url or self.url.startswith("duckdb")


@dataclass(frozen=True)
class StateConfig:
    """``[state]``: the monitor's own store (runs, results, outbox). Any SQLAlchemy URL
    but Spark's (it needs transactions and UPDATE); a PostgreSQL one holds no password,
    as ``[warehouse] url`` (libpq's PGPASSWORD or .pgpass, or password_env naming the
    variable that holds it)."""

    url: str = "sqlite:///data/state.db"
    password_env: str = ""


@dataclass(frozen=True)
class DbtConfig:
    """``[dbt]``: the dbt project the daemon runs (any project, not only ours)."""

    project_dir: Path = Path("pipeline")
    profiles_dir: Path = Path("pipeline")
    profile: str = ""
    target: str = ""
    target_path: Path = Path("data/dbt-target")
    log_path: Path = Path("data/dbt-logs")
    threads: int = 2
    select: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    # dbt unit tests check the SQL, not the data: CI runs them; cycles skip them.
    unit_tests_in_cycle: bool = False


@dataclass(frozen=True)
class FeedConfig:
    """``[ingest.feeds.<name>]``: one landed feed and its file contract."""

    columns: list[str]
    required: list[str] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    pattern: str = "*.csv"
    delimiter: str = ","


@dataclass(frozen=True)
class IngestConfig:
    """``[ingest]``: the landing zone and the raw tables it feeds."""

    enabled: bool = True
    landing_dir: Path = Path("data/landing")
    schema: str = "raw"
    feeds: dict[str, FeedConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationConfig:
    """``[validation]``: Great Expectations suites (GX-native JSON files)."""

    enabled: bool = True
    suites_dir: Path = Path("expectations")
    unexpected_sample: int = 5


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: /metrics, /healthz, /readyz. Loopback unless configured."""

    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class SchedulerConfig:
    """``[scheduler]``: when the daemon runs its jobs."""

    cycle_cron: str = "0 * * * *"
    freshness_cron: str = "*/15 * * * *"
    misfire_grace_s: int = 600
    stop_timeout_s: int = 60
    ready_max_failed_cycles: int = 1
    pause_on_critical: bool = True
    timezone: str = "UTC"


@dataclass(frozen=True)
class EvidenceConfig:
    """``[evidence]``: per-run evidence, triage reports and last-known-good snapshots."""

    dir: Path = Path("data/evidence")
    snapshots_dir: Path = Path("data/snapshots")
    keep_snapshots: int = 3
    # Every n-th snapshot copies the tables whole; the others copy the rows changed since
    # the previous one (1: always whole). A kept snapshot keeps the chain it builds on.
    full_snapshot_every: int = 7
    # The cycle writes an incident report for each failed or anomalous run; its
    # full-refresh check copies the warehouse file, skipped above this size.
    auto_triage: bool = True
    isolation_max_bytes: int = 20 * 2**30


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: ``format`` is ``text`` (terminal) or ``json`` (journald, containers)."""

    format: str = "text"
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it came from (None: defaults)."""

    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)
    state: StateConfig = field(default_factory=StateConfig)
    dbt: DbtConfig = field(default_factory=DbtConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    alerting: AlertingConfig = field(default_factory=AlertingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # [layers]: glob of a model's name or file path -> layer, for models whose dbt meta
    # sets none (monitor.core.manifest): e.g. "models/marts/*" = "fct".
    layers: dict[str, str] = field(default_factory=dict)
    source: Path | None = None


def config_path(explicit: str | None) -> Path:
    """The config file to use: ``--config``, else ``$MONITOR_CONFIG``, else ./config.toml."""
    return Path(explicit or os.environ.get("MONITOR_CONFIG") or DEFAULT_CONFIG)


def load_config(path: Path) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` naming the bad key."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    base = path.resolve().parent
    cfg = _build(Config, {k: v for k, v in raw.items()}, "", base)
    cfg = dataclasses.replace(cfg, source=path.resolve())
    _check(cfg)
    return cfg


def _build(cls: type, data: Any, where: str, base: Path) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{where or 'top level'}] must be a table, got {_tname(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"[{where or 'top level'}] unknown key '{unknown[0]}' "
            f"(known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key, base)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"[{where}] {exc}") from exc
    except ValueError as exc:  # the section's own checks (__post_init__)
        raise ConfigError(f"[{where}] {exc}") from exc


def _coerce(tp: Any, value: Any, key: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(arg, value, key, base)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, key, base)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_tname(value)}")
        return [_coerce(item, v, f"{key}[{i}]", base) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_tname(value)}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{key}[{i}]", base) for i, v in enumerate(value))
    if origin is dict:
        _, vt = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_tname(value)}")
        return {k: _coerce(vt, v, f"{key}.{k}", base) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {_tname(value)}")
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_tname(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_tname(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_tname(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_tname(value)}")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{key}: expected one of {allowed}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # a bug, not user input


def _tname(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    ) + (f" ({value!r})" if isinstance(value, (str, int, float)) else "")


def resolve_file_url(url: str, base: Path) -> str:
    """Make the relative file of a ``sqlite:///file`` or ``duckdb:///file`` URL relative
    to the config folder (an absolute path, ``:memory:`` and other URLs are kept)."""
    for prefix in ("sqlite:///", "duckdb:///"):
        if url.startswith(prefix):
            rest = url[len(prefix):]
            if rest and not rest.startswith(("/", ":memory:")):
                return prefix + str(base / rest)
    return url


def _check_server_url(section: str, url: str, password_env: str) -> None:
    """A server URL names its database and user and never carries a password (the file
    is read by anyone who can read the deployment)."""
    if password_env and not _ENV_NAME.fullmatch(password_env):
        raise ConfigError(f"{section}.password_env: not a variable name: {password_env!r}")
    if not url:
        return
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"{section}.url: not a URL: {url!r}")
    if not scheme.startswith("postgresql"):
        return
    if scheme not in ("postgresql", "postgresql+psycopg2"):
        raise ConfigError(f"{section}.url: driver {scheme!r} unsupported; use "
                          "postgresql+psycopg2://user@host:port/db")
    netloc, _, tail = rest.partition("/")
    userinfo, at, _ = netloc.rpartition("@")
    if ":" in userinfo:
        raise ConfigError(f"{section}.url: holds a password; keep it out of the file "
                          f"(PGPASSWORD, ~/.pgpass, or {section}.password_env)")
    database = tail.partition("?")[0]
    for what, value in (("user", userinfo if at else ""), ("database", database)):
        if not _PG_NAME.fullmatch(value):
            raise ConfigError(f"{section}.url: missing or odd {what} name: {value!r}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")


def _check(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    _check_server_url("warehouse", cfg.warehouse.url, cfg.warehouse.password_env)
    _check_server_url("state", cfg.state.url, cfg.state.password_env)
    if cfg.state.url.lower().startswith("sc://"):
        raise ConfigError("state.url: the state store cannot be Spark (no transactions, no "
                          "UPDATE on parquet tables); keep it on SQLite, a DuckDB file or "
                          "PostgreSQL")
    if cfg.warehouse.url.lower().startswith("sc://") and ";token=" in cfg.warehouse.url.lower():
        raise ConfigError("warehouse.url: holds a token; keep it out of the file "
                          "(name the variable that holds it in warehouse.password_env)")
    if cfg.ingest.enabled:
        if not IDENTIFIER.fullmatch(cfg.ingest.schema):
            raise ConfigError(f"ingest.schema: not a valid identifier: {cfg.ingest.schema!r}")
        for feed, spec in cfg.ingest.feeds.items():
            if not IDENTIFIER.fullmatch(feed):
                raise ConfigError(f"ingest.feeds: not a valid feed name: {feed!r}")
            for col in [*spec.columns, *spec.required, *spec.key]:
                if not IDENTIFIER.fullmatch(col):
                    raise ConfigError(f"ingest.feeds.{feed}: not a valid column name: {col!r}")
            missing = sorted(set(spec.required) - set(spec.columns))
            if missing:
                raise ConfigError(
                    f"ingest.feeds.{feed}.required: not in columns: {', '.join(missing)}"
                )
            if len(spec.delimiter) != 1:
                raise ConfigError(f"ingest.feeds.{feed}.delimiter: must be one character")
    unknown_feeds = sorted(set(cfg.volume.feeds) - set(cfg.ingest.feeds))
    if unknown_feeds:
        raise ConfigError(f"volume.feeds: no such feed in [ingest.feeds]: {unknown_feeds[0]!r}")
    if not (cfg.dbt.project_dir / "dbt_project.yml").is_file():
        raise ConfigError(f"dbt.project_dir: no dbt_project.yml in {cfg.dbt.project_dir}")
    if not 0 <= cfg.http.port < 65536:
        raise ConfigError(f"http.port: must be 0-65535, got {cfg.http.port}")
    if cfg.evidence.full_snapshot_every < 1:
        raise ConfigError("evidence.full_snapshot_every: must be >= 1, got "
                          f"{cfg.evidence.full_snapshot_every}")
    if cfg.logging.format not in ("text", "json"):
        raise ConfigError(f"logging.format: expected 'text' or 'json', got {cfg.logging.format!r}")
    if cfg.validation.enabled and not cfg.validation.suites_dir.is_dir():
        raise ConfigError(f"validation.suites_dir: not a folder: {cfg.validation.suites_dir}")


def state_url(cfg: Config) -> str:
    """The state-store URL with a relative SQLite or DuckDB file resolved against the
    config folder."""
    base = cfg.source.parent if cfg.source else Path.cwd()
    url = resolve_file_url(cfg.state.url, base)
    if not cfg.state.password_env:
        return url
    password = os.environ.get(cfg.state.password_env)
    if password is None:
        raise ConfigError(f"state.password_env: ${cfg.state.password_env} is not set")
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    user, _, host = netloc.rpartition("@")
    return f"{scheme}://{user}:{urllib.parse.quote(password, safe='')}@{host}{slash}{tail}"
