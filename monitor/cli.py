"""The ``monitor`` command line."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

from monitor import __version__
from monitor.core import logs
from monitor.core.config import Config, ConfigError, config_path, load_config

EXIT_USAGE = 2

log = logging.getLogger("monitor")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"monitor: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _load(args: argparse.Namespace) -> Config:
    cfg = load_config(config_path(args.config))
    logs.setup(cfg.logging, verbose=getattr(args, "verbose", False))
    return cfg


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="monitor",
        description="Data-quality monitoring daemon for layered warehouse pipelines.",
    )
    p.add_argument("--version", action="version", version=f"monitor {__version__}")
    p.add_argument("--config", help="config file (default: $MONITOR_CONFIG or ./config.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(metavar="COMMAND")

    once = sub.add_parser("once", help="run one cycle: ingest, build, validate, observe")
    once.add_argument("--full-refresh", action="store_true", help="rebuild incremental models")
    once.add_argument(
        "--as-of", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD",
        help="the business day of the data (a backfill): drift points and feed-day volumes "
             "are recorded under it (default: the newest date in the landed files' paths, "
             "else today)",
    )
    once.set_defaults(func=_cmd_once)

    gen = sub.add_parser("generate", help="write synthetic HR/benefits feeds")
    gen.add_argument("--out", required=True, type=Path)
    gen.add_argument("--start", required=True, type=date.fromisoformat, help="YYYY-MM-DD")
    gen.add_argument("--days", required=True, type=_positive)
    gen.add_argument("--claims-per-day", required=True, type=_positive)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--inject", action="append", default=[], metavar="KIND[@YYYY-MM-DD]",
        help="add an incident to the generated feeds (repeatable)",
    )
    gen.set_defaults(func=_cmd_generate)

    for name, helptext in (
        ("release", "merge a held batch on an operator's word"),
        ("reject", "retire a held batch; it is never merged"),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("batch")
        c.add_argument("--reason", required=True)
        if name == "reject":
            c.add_argument("--retract", action="store_true",
                           help="also take back a published batch (then roll back the facts)")
        c.set_defaults(func=_cmd_decide, decision=name)

    demo = sub.add_parser("demo", help="bounded demo: a week of feeds, one cycle per day")
    demo.add_argument("--days", type=_positive, default=7)
    demo.add_argument("--claims-per-day", type=_positive, default=2000)
    demo.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 2))
    demo.add_argument("--dir", type=Path, default=None, help="workspace (default data/demo)")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="the daemon: scheduled cycles, /metrics, /healthz, /readyz")
    run.add_argument("--run-now", action="store_true", help="also start a cycle immediately")
    run.set_defaults(func=_cmd_run)

    resume = sub.add_parser("resume", help="lift the circuit breaker (paused pipeline)")
    resume.add_argument("--reason", required=True)
    resume.set_defaults(func=_cmd_resume)

    triage = sub.add_parser("triage", help="write the incident report of a run")
    triage.add_argument("--run", dest="run_id", default=None, help="run id (default: latest)")
    triage.add_argument("--format", choices=("md", "html", "json"), default="md")
    triage.add_argument("--out", type=Path, default=None, help="file (default: evidence dir)")
    triage.set_defaults(func=_cmd_triage)

    rollback = sub.add_parser("rollback", help="restore the facts of a last-known-good run")
    rollback.add_argument("--to", dest="to_run", required=True, help="run id of the snapshot")
    rollback.add_argument("--reason", required=True)
    rollback.set_defaults(func=_cmd_rollback)

    snaps = sub.add_parser("snapshots", help="list the last-known-good snapshots")
    snaps.add_argument("--json", action="store_true")
    snaps.set_defaults(func=_cmd_snapshots)

    status = sub.add_parser("status", help="last runs, held batches, paused state")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)

    rules = sub.add_parser("rules", help="Prometheus alerting rules from the [alerting] rules")
    rules.add_argument("--out", type=Path, default=None, help="file (default: stdout)")
    rules.set_defaults(func=_cmd_rules)
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _cmd_once(args: argparse.Namespace) -> int:
    from monitor.cycle.run import run_cycle
    from monitor.ops.summary import render_cycle
    from monitor.warehouse.lock import Busy

    cfg = _load(args)
    _check_project(cfg)
    try:
        result = run_cycle(cfg, full_refresh=args.full_refresh, trigger="once",
                           as_of=args.as_of)
    except Busy as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 4
    print(render_cycle(result))
    if result.exit_code:
        print(f"monitor: {result.status}: {result.reason}", file=sys.stderr)
    if result.breaker:
        print(f"monitor: circuit breaker: downstream paused ({result.breaker}); "
              "`monitor resume --reason TEXT` lifts it", file=sys.stderr)
    return result.exit_code


def _cmd_generate(args: argparse.Namespace) -> int:
    from dqm_demo.generate import generate, parse_injection

    try:
        injections = [parse_injection(t) for t in args.inject]
    except ValueError as exc:
        print(f"monitor generate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    files = generate(
        args.out, args.start, args.days, args.claims_per_day, seed=args.seed, inject=injections
    )
    print(f"wrote {len(files)} files under {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dqm_demo.demo import run_demo

    cfg = _load(args)
    root = args.dir or (cfg.source.parent if cfg.source else Path.cwd()) / "data" / "demo"
    return run_demo(cfg, root, args.days, args.claims_per_day, args.start)


def _cmd_decide(args: argparse.Namespace) -> int:
    from monitor.ops.operations import decide_batch

    cfg = _load(args)
    actor = getpass.getuser()
    try:
        if getattr(args, "retract", False):
            from monitor.recovery.retract import retract_batch

            message = retract_batch(cfg, args.batch, args.reason, actor)
        else:
            message = decide_batch(cfg, args.batch, args.decision, args.reason, actor)
    except (ValueError, RuntimeError) as exc:
        print(f"monitor {args.decision}: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon.scheduler import run_daemon

    cfg = _load(args)
    _check_project(cfg)
    return run_daemon(cfg, run_now=args.run_now)


def _check_project(cfg: Config) -> None:
    """The dbt target and config that names the project's models are checked at start
    (ConfigError), before any file is ingested or any model built."""
    from monitor.stages.build import DbtProject

    DbtProject(cfg).check_config()


def _cmd_resume(args: argparse.Namespace) -> int:
    from monitor.ops.operations import resume

    cfg = _load(args)
    try:
        print(resume(cfg, args.reason, getpass.getuser()))
    except ValueError as exc:
        print(f"monitor resume: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_triage(args: argparse.Namespace) -> int:
    from monitor.triage.analyse import TriageError, write_report

    cfg = _load(args)
    try:
        path = write_report(cfg, args.run_id, args.format, args.out)
    except TriageError as exc:
        print(f"monitor triage: {exc}", file=sys.stderr)
        return 1
    if args.format == "json" and args.out is None:
        # For `| jq`: the document itself on stdout; the file stays in the evidence dir.
        sys.stdout.write(path.read_text(encoding="utf-8").rstrip("\n") + "\n")
        return 0
    print(path)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from monitor.recovery.rollback import rollback
    from monitor.recovery.snapshots import SnapshotError

    cfg = _load(args)
    try:
        print(rollback(cfg, args.to_run, args.reason, getpass.getuser()))
    except SnapshotError as exc:
        print(f"monitor rollback: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_snapshots(args: argparse.Namespace) -> int:
    from monitor.recovery.snapshots import list_snapshots, snapshots_where

    cfg = _load(args)
    kept = list_snapshots(cfg)
    if args.json:
        print(json.dumps([i.to_json() for i in kept], indent=2, default=str))
        return 0
    print(f"{'run':28} {'kind':5} {'on':28} {'rows stored':>12} {'of rows':>10} "
          f"{'MiB':>8} {'seconds':>8}")
    for i in kept:
        print(f"{i.run_id:28} {i.kind:5} {i.parent or '-':28} {i.stored_rows:>12} "
              f"{i.rows:>10} {i.bytes / 2**20:>8.1f} {i.seconds:>8.2f}")
    if not kept:
        print(f"(none in {snapshots_where(cfg)})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from monitor.ops.operations import status_report
    from monitor.ops.summary import render_status

    cfg = _load(args)
    report = status_report(cfg)
    print(json.dumps(report, indent=2, default=str) if args.json else render_status(report))
    return 0


def _cmd_rules(args: argparse.Namespace) -> int:
    from monitor.alerting.promrules import render

    cfg = _load(args)
    if args.out is None:
        sys.stdout.write(render(cfg))
        return 0
    # Replaced whole, so a Prometheus reloading meanwhile never reads half a file.
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(render(cfg, out=str(args.out)), encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
