"""Throughput figures for the README's Results table, each measured in one run.

    .venv/bin/python bench/throughput.py history --claims 1000000 --days 31 [--no-views]
    .venv/bin/python bench/throughput.py history --engine postgres --claims 100000 --days 8
    .venv/bin/python bench/throughput.py daemon

history: generates DAYS days at CLAIMS claims/day, runs one cycle per day in order, prints
  each day's steps, and the day-31 cycle against the day-2 cycle (incremental cost must
  follow the day's volume, not the table's size: target <= 1.2; each of the two days is
  run --repeat times from the same starting copy, median reported), also as the median of
  the last week against the first full week, and the share of each cycle spent on
  monitoring (gate + post-build suites + profile/drift/alerts) against the build, and
  the dbt models whose seconds grew most from day 2 to the last day. ``--engine
  postgres``: the same on a fresh PostgreSQL database (``--pg-url``, else a throwaway
  server, as bench/cycle.py); each day runs once there (the warehouse is in the server,
  so the workspace copy that --repeat restores does not hold it).
daemon: an idle daemon's memory, and /metrics latency under 20 concurrent scrapers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dqm_demo.demo import days, land_day, workspace  # noqa: E402
from dqm_demo.generate import generate  # noqa: E402
from monitor.core.config import Config, load_config  # noqa: E402
from monitor.cycle.result import CycleResult  # noqa: E402
from monitor.cycle.run import run_cycle  # noqa: E402
from monitor.recovery.snapshots import list_snapshots  # noqa: E402

MONITORING = ("gate", "validate", "observe")


def history(args: argparse.Namespace) -> int:
    out = args.out / "history"
    if out.exists():
        shutil.rmtree(out)
    cfg = workspace(load_config(REPO / "config.toml"), out / "ws")
    with contextlib.ExitStack() as stack:
        if args.engine == "postgres":
            from bench.cycle import engine_suites, postgres_database

            url = stack.enter_context(postgres_database(args.pg_url))
            cfg = dataclasses.replace(cfg, warehouse=dataclasses.replace(cfg.warehouse, url=url))
            cfg, kept, skipped = engine_suites(cfg, out / "suites")
            print(f"PostgreSQL: {kept} suites run, {skipped} left out (another engine's); "
                  "each day run once")
            args.repeat = 1
        return _history(args, cfg, out)
    return 1  # not reached


def _history(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    if args.no_views:
        cfg = dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, views=False))
    feeds = out / "feeds"
    steps = ("ingest", "gate", "build", "validate", "observe")
    print(f"{'day':<12}{'status':<9}{'rows in':>9}{'cycle s':>9}"
          + "".join(f"{s:>9}" for s in steps) + f"{'lkg s':>7}{'share':>7}{'fct_claims':>12}")
    days_: dict[int, Day] = {}
    models: dict[int, dict[str, float]] = {}  # dbt model seconds, day 2 and the last day
    for i, day in enumerate(days(args.start, args.days), start=1):
        generate(feeds, day, 1, args.claims, seed=3)  # one day at a time: same bytes
        land_day(feeds, cfg.ingest.landing_dir, day)
        shutil.rmtree(feeds)
        repeat = args.repeat if i in (2, args.days) else 1
        d, r, walls = _measure(cfg, day, out / "ws", repeat)
        days_[i] = d
        if r.dbt is not None and i in (2, args.days):
            models[i] = {n.name: n.duration_s for n in r.dbt.models}
        fct = r.layer_rows.get("fct", {}).get("fct_claims", 0)
        print(f"{day!s:<12}{r.status:<9}{d.rows:>9,}{d.wall:>9.1f}"
              + "".join(f"{d.timings.get(s, 0.0):>9.2f}" for s in steps)
              + f"{d.lkg:>7.2f}{d.share:>7.0%}{fct:>12,}"
              + (f"  median of {repeat}: {', '.join(f'{w:.1f}' for w in walls)}"
                 if repeat > 1 else ""), flush=True)
    last = max(days_)
    if 2 in days_ and last > 2:
        d2, dn = days_[2], days_[last]
        print(f"\nday-{last} cycle {dn.wall:.1f}s vs day-2 {d2.wall:.1f}s: "
              f"{dn.wall / d2.wall:.2f}x raw, {dn.per_row / d2.per_row:.2f}x per input row "
              "(target <= 1.2)")
    if last >= 14:
        # One day can land on DuckDB's periodic row-group merge (a checkpoint rewriting
        # part-filled row groups; README): a week's median against the first full week's
        # (the same weekdays) shows the trend without it.
        first = [days_[i].per_row for i in range(2, 9)]
        recent = [days_[i].per_row for i in range(last - 6, last + 1)]
        print(f"median seconds per input row, days {last - 6}-{last} vs days 2-8: "
              f"{statistics.median(recent) / statistics.median(first):.2f}x (target <= 1.2)")
    if 2 in models and last in models and last > 2:
        # Where the build's growth is: dbt models whose seconds grew most (the run with
        # the median wall time of each day).
        grew = sorted(models[last], key=lambda m: models[2].get(m, 0.0) - models[last][m])
        print(f"dbt models, day 2 -> day {last} (s): " + ", ".join(
            f"{m} {models[2].get(m, 0.0):.2f} -> {models[last][m]:.2f}" for m in grew[:4]))
    shares = [d.share for d in days_.values() if d.timings.get("build")]
    print(f"monitoring / build: median {statistics.median(shares):.0%} (target <= 25%)")
    return 0


def _measure(cfg: Config, day: date, ws: Path, repeat: int) -> tuple[Day, CycleResult, list[float]]:
    """Run the day's cycle ``repeat`` times, each from a copy of the workspace as it stood
    before the day; the run with the median wall time. One cycle can land on a DuckDB
    checkpoint or a busy second on this 2-core machine, so the two days the ratio
    compares are each measured more than once."""
    saved = ws.with_name(ws.name + ".before")
    if repeat > 1:
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(ws, saved)
    runs: list[tuple[float, Day, CycleResult]] = []
    for k in range(repeat):
        if k:
            shutil.rmtree(ws)
            shutil.copytree(saved, ws)
        # The day's files (and any copy) on disk first: a delivery lands well before the
        # cycle, and the cycle's own fsyncs (DuckDB commits and checkpoints) should not
        # wait for the bench's writes.
        os.sync()
        _warm(cfg)
        started = time.perf_counter()
        r = run_cycle(cfg, trigger="bench", as_of=day)
        wall = time.perf_counter() - started  # everything the daemon does for the day
        runs.append((wall, Day(wall, r.ingest.rows_loaded, dict(r.timings),
                               _lkg_seconds(cfg, r.run_id)), r))
    shutil.rmtree(saved, ignore_errors=True)
    _, d, r = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    return d, r, [w for w, _, _ in runs]


def _warm(cfg: Config) -> None:
    """Read the DuckDB warehouse file once, so that every measured day starts with it in
    the page cache. The bench's own copies of the workspace (the --repeat copy: about
    14 GB on day 31 at 1M claims/day, 1 GB on day 2) would otherwise evict it before the
    late days only, which made the day-31 cycle 2.9 s slower than the same cycle with
    the file cached (README, Results)."""
    path = cfg.warehouse.path
    if cfg.warehouse.url or not path.is_file():
        return
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass


@dataclasses.dataclass
class Day:
    wall: float
    rows: int
    timings: dict[str, float]
    lkg: float

    @property
    def per_row(self) -> float:
        """Cycle seconds per input row: weekends and month-ends differ in volume."""
        return self.wall / self.rows if self.rows else 0.0

    @property
    def share(self) -> float:
        build = self.timings.get("build", 0.0)
        return sum(self.timings.get(k, 0.0) for k in MONITORING) / build if build else 0.0


def _lkg_seconds(cfg: Config, run_id: str) -> float:
    """Seconds the run's last-known-good copy took (0 when none was kept)."""
    return next((s.seconds for s in list_snapshots(cfg) if s.run_id == run_id), 0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon(args: argparse.Namespace) -> int:
    out = args.out / "daemon"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    port = _free_port()
    text = (REPO / "config.toml").read_text()
    text = text.replace('"pipeline"', f'"{REPO / "pipeline"}"')
    text = text.replace('"expectations"', f'"{REPO / "expectations"}"')
    text = text.replace('"data/', f'"{out}/').replace('"sqlite:///data/', f'"sqlite:///{out}/')
    text = text.replace("port = 9108", f"port = {port}")
    text = text.replace('cycle_cron = "0 * * * *"', 'cycle_cron = "0 0 1 1 *"')
    cfg = out / "config.toml"
    cfg.write_text(text)
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "monitor"), "--config", str(cfg),
                             "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            try:
                if urllib.request.urlopen(url + "/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        print(f"daemon ready in {time.monotonic() - t0:.1f}s")
        time.sleep(2)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = {k: v.strip() for k, v in (line.split(":", 1) for line in status.splitlines())
               if k in ("VmRSS", "VmHWM")}
        print(f"idle daemon memory: RSS {rss['VmRSS']}, peak {rss['VmHWM']}")

        def scrape(_: int) -> float:
            t = time.perf_counter()
            with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
                resp.read()
            return time.perf_counter() - t

        n = args.scrapes
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            t = time.perf_counter()
            lat = sorted(pool.map(scrape, range(n)))
            wall = time.perf_counter() - t
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
        print(f"/metrics under 20 concurrent scrapers: {n} scrapes in {wall:.2f}s "
              f"({n / wall:.0f}/s), p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, "
              f"max {lat[-1] * 1000:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    sub = ap.add_subparsers(dest="what", required=True)
    h = sub.add_parser("history")
    h.add_argument("--claims", type=int, default=1_000_000)
    h.add_argument("--days", type=int, default=31)
    h.add_argument("--start", type=date.fromisoformat, default=date(2026, 3, 2))
    h.add_argument("--repeat", type=int, default=3,
                   help="runs of day 2 and the last day, each from the same starting copy; "
                        "the median is reported (default 3)")
    h.add_argument("--no-views", action="store_true",
                   help="[profile] views = false: count tables only")
    h.add_argument("--engine", choices=("duckdb", "postgres"), default="duckdb")
    h.add_argument("--pg-url", default=None,
                   help="postgresql+psycopg2://user@host:port/db of a server whose user may "
                        "create a database (default: start a throwaway server)")
    h.set_defaults(func=history)
    d = sub.add_parser("daemon")
    d.add_argument("--scrapes", type=int, default=2000)
    d.set_defaults(func=daemon)
    args = ap.parse_args()
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
