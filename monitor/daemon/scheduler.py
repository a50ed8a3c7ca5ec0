"""The daemon: APScheduler jobs, health endpoints, signals, systemd notification.

Jobs persist in the state store under fixed ids, so a restart neither duplicates nor
loses one; one cycle runs at a time. SIGTERM lets the running cycle finish its step for
up to ``stop_timeout_s`` (a file load and a fact merge are one transaction each, so an
abandoned cycle leaves nothing half done); SIGHUP reloads the config for the next cycle.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    SchedulerEvent,
)
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from monitor.alerting.freshness import check_freshness
from monitor.core import logs
from monitor.core.config import Config, ConfigError, load_config, state_url
from monitor.core.logs import run_id_var
from monitor.cycle.breaker import mark_interrupted
from monitor.cycle.run import run_cycle as _run
from monitor.daemon.health import Health, sd_notify
from monitor.daemon.jobstore import (
    CYCLE_JOB,
    FRESHNESS_JOB,
    JOB_TABLE,
    RUN_NOW_JOB,
    _iso,
    migrate_job_funcs,
)
from monitor.export.gauges import refresh_state_gauges
from monitor.export.prometheus import Metrics, MetricsServer
from monitor.store import state
from monitor.warehouse.lock import Busy, cycle_lock

if TYPE_CHECKING:
    from monitor.cycle.result import CycleResult

log = logging.getLogger(__name__)

STATE_POLL_S = 5.0  # how soon an operator's `monitor resume` shows in dqm_paused
_daemon: Daemon | None = None  # the jobs' way back to the running daemon


def cycle_job(trigger: str = "schedule") -> None:
    """Scheduled pipeline cycle (module-level so the job store can reference it)."""
    if _daemon is not None:
        _daemon.run_cycle(trigger)


def freshness_job() -> None:
    if _daemon is not None:
        _daemon.check_freshness()


@dataclass(frozen=True)
class JobSpec:
    """One persistent job: what the job store should hold under ``id``."""

    id: str
    name: str
    func: Any
    cron: str

    def trigger(self, cfg: Config) -> CronTrigger:
        return CronTrigger.from_crontab(self.cron, timezone=cfg.scheduler.timezone)


def job_specs(cfg: Config) -> list[JobSpec]:
    s = cfg.scheduler
    return [
        JobSpec(CYCLE_JOB, "pipeline cycle", cycle_job, s.cycle_cron),
        JobSpec(FRESHNESS_JOB, "feed freshness", freshness_job, s.freshness_cron),
    ]


def _same_schedule(job: Job, trigger: CronTrigger, spec: JobSpec, grace: int) -> bool:
    """True when the stored job already is ``spec`` (keep it and its next run time)."""
    old = job.trigger
    return (
        isinstance(old, CronTrigger)
        and str(old) == str(trigger)
        and str(old.timezone) == str(trigger.timezone)
        and job.func_ref == f"{__name__}:{spec.func.__name__}"
        and job.misfire_grace_time == grace
        and job.name == spec.name
    )


class Daemon:
    """``monitor run``: owns the scheduler, the HTTP server and the metrics."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics(currency=cfg.cost.currency)
        self.metrics.declare_jobs([CYCLE_JOB, FRESHNESS_JOB])
        self.health = Health()
        self.stop_event = threading.Event()
        self._reload_event = threading.Event()
        self._cycle_lock = threading.Lock()
        self._heartbeat = time.monotonic()  # the main loop's last turn (for the watchdog)
        self.st: sa.Engine | None = None
        self.scheduler = BackgroundScheduler(
            jobstores={
                "default": SQLAlchemyJobStore(url=state_url(cfg), tablename=JOB_TABLE),
                # One-off jobs (--run-now) must not survive a crash into the next start.
                "volatile": MemoryJobStore(),
            },
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": cfg.scheduler.misfire_grace_s,
            },
            timezone=cfg.scheduler.timezone,
        )
        self.scheduler.add_listener(
            self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
        )
        self.server: MetricsServer | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, run_now: bool = False) -> None:
        global _daemon
        _daemon = self
        # Handlers first: a SIGTERM that arrives while starting still stops us cleanly.
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.st = state.open_state(state_url(self.cfg))  # creates tables, checks reachability
        migrate_job_funcs(self.st)
        self._recover()
        self.refresh_gauges()  # restored before the first scrape (last success, pause)
        self.server = self.metrics.serve(
            self.cfg.http.host, self.cfg.http.port,
            extra_routes={"/healthz": self.healthz, "/readyz": self.readyz},
        )
        # Paused start: the stored jobs are loaded and reconciled before any of them
        # may fire, so an unchanged job keeps its next run time (catch-up or missed).
        self.scheduler.start(paused=True)
        self._schedule()
        self.scheduler.resume()
        self.refresh_gauges()
        log.info("daemon ready: metrics on %s, next cycle %s", self.server.url, self.next_run())
        sd_notify("READY=1\nSTATUS=ready; next cycle " + str(self.next_run()))
        self._heartbeat = time.monotonic()
        for target, name in ((self._watchdog, "watchdog"), (self._poll_state, "state-poll")):
            threading.Thread(target=target, name=name, daemon=True).start()
        if run_now:
            self.scheduler.add_job(
                cycle_job, args=["run-now"], id=RUN_NOW_JOB, name="cycle (--run-now)",
                jobstore="volatile", replace_existing=True, misfire_grace_time=None,
            )

    def _recover(self) -> None:
        """Record runs a killed process left 'running' as interrupted (when no cycle runs)."""

        assert self.st is not None
        try:
            with cycle_lock(self.cfg):
                n = mark_interrupted(self.st, cfg=self.cfg)
        except Busy:
            log.info("a cycle is running in another process; its runs are left alone")
            return
        if n:
            log.warning("%d run(s) left running by a previous process recorded as interrupted", n)
            self.metrics.runs_total.labels(status="interrupted").inc(n)

    def _schedule(self) -> None:
        """Make the job store hold exactly our jobs: keep unchanged ones, replace others."""
        grace = self.cfg.scheduler.misfire_grace_s
        specs = job_specs(self.cfg)
        wanted = {s.id for s in specs}
        for job in self.scheduler.get_jobs(jobstore="default"):
            if job.id not in wanted:  # e.g. a job id of an older version
                log.info("removing stale job %s from the job store", job.id)
                job.remove()
        for spec in specs:
            trigger = spec.trigger(self.cfg)
            existing = self.scheduler.get_job(spec.id, jobstore="default")
            if existing is not None and _same_schedule(existing, trigger, spec, grace):
                log.info("job %s kept (%s), next run %s", spec.id, spec.cron,
                         _iso(existing.next_run_time))
                continue
            self.scheduler.add_job(
                spec.func, trigger, id=spec.id, name=spec.name, jobstore="default",
                replace_existing=True, misfire_grace_time=grace,
            )
            log.info("job %s scheduled: %s", spec.id, spec.cron)

    def wait(self) -> int:
        """Block until SIGTERM/SIGINT; reload on SIGHUP. Returns the exit code."""
        while not self.stop_event.wait(0.2):
            self._heartbeat = time.monotonic()
            if self._reload_event.is_set():
                self._reload_event.clear()
                self.reload()
        return self.stop()

    def stop(self) -> int:
        """Stop scheduling, give the running cycle ``stop_timeout_s``, then leave."""
        self.stop_event.set()  # a running cycle will not start its build
        sd_notify("STOPPING=1")
        bound = self.cfg.scheduler.stop_timeout_s
        log.info("stopping: waiting up to %ss for the current step", bound)
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + bound
        while self.health.cycle_running and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.health.cycle_running:
            self._abandon(bound)
        if self.server:
            self.server.shutdown()
        if self.st is not None:
            self.st.dispose()
        log.info("stopped")
        return 0

    def _abandon(self, bound: int) -> None:
        """Exit under a running cycle: its open warehouse transaction is never committed."""

        log.warning("cycle still running after %ss: abandoning it", bound)
        try:
            assert self.st is not None
            # The cycle thread holds the cycle lock, so every 'running' run is ours.
            mark_interrupted(self.st, reason=f"abandoned at stop after {bound}s")
        except Exception:
            log.exception("could not record the abandoned run (the next start will)")
        _exit(0)

    def _on_stop(self, signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.stop_event.set()

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self._reload_event.set()  # reloaded by the main loop, not inside the handler

    def reload(self) -> None:
        """SIGHUP: re-read the config; schedule, rules, checks and logging change now.

        A config that does not load (TOML syntax, an unknown key, a bad value, a cron or
        log level that would only fail when applied) changes nothing: the running config
        stays, one error line names the problem, and the daemon keeps serving.
        """
        assert self.cfg.source is not None
        try:
            new = load_config(self.cfg.source)
            _check_reloadable(new)
        except Exception as exc:  # never let a bad file take the running daemon down
            log.error("SIGHUP: config not reloaded, the running config stays: %s",
                      _one_line(exc))
            return
        if (new.http, new.state) != (self.cfg.http, self.cfg.state):
            log.warning("SIGHUP: [http] and [state] changes take effect after a restart")
            # The HTTP server and the job store stay where they are until then.
            new = dataclasses.replace(new, http=self.cfg.http, state=self.cfg.state)
        old, self.cfg = self.cfg, new
        try:
            logs.setup(new.logging)
            self._schedule()
        except Exception as exc:  # checked above, so not expected: put the old one back
            self.cfg = old
            logs.setup(old.logging)
            self._schedule()
            log.error("SIGHUP: config not reloaded, the running config stays: %s",
                      _one_line(exc))
            return
        log.info("SIGHUP: config reloaded from %s; next cycle %s", new.source, self.next_run())

    def _watchdog(self) -> None:
        """Ping systemd's watchdog while the scheduler and the main loop are alive."""
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec or (pid and pid != str(os.getpid())):  # not meant for this process
            return
        interval = usec / 2e6
        while True:
            # A stuck main loop (no signal handling, no reload) must let systemd restart us.
            fresh = time.monotonic() - self._heartbeat < max(interval, 1.0)
            if self.scheduler.running and fresh:
                sd_notify("WATCHDOG=1")
            if self.stop_event.wait(interval):
                return

    def _poll_state(self) -> None:
        """Follow the pause flag, which operators change from another process."""
        while not self.stop_event.wait(STATE_POLL_S):
            try:
                assert self.st is not None
                self.metrics.set_paused(state.paused(self.st) is not None)
            except Exception as exc:  # the state store is down: /readyz says so
                log.debug("state poll failed: %s", exc)

    # -- jobs ------------------------------------------------------------------------

    def run_cycle(self, trigger: str) -> None:

        if self.stop_event.is_set():
            return
        if not self._cycle_lock.acquire(blocking=False):
            # Another trigger's cycle is running: it will pick up the same data.
            log.warning("cycle (%s) skipped: another cycle is still running", trigger)
            self.metrics.job_missed(CYCLE_JOB)
            return
        # "Running" until the breaker and gauges are done: a stop must not cut them off.
        self.health.cycle_running = True
        try:
            try:
                result = _run(self.cfg, trigger=trigger, metrics=self.metrics,
                              stop=self.stop_event)
            except Busy as exc:
                log.warning("cycle skipped: %s", exc)
                return
            except Exception:
                # Recorded as failed by the cycle, counted as a job error by the listener.
                self.health.failed_cycles += 1
                self.metrics.runs_total.labels(status="failed").inc()
                raise
            token = run_id_var.set(result.run_id)  # the run's own lines keep its id
            try:
                self._after_cycle(result)
            finally:
                run_id_var.reset(token)
        finally:
            self.health.cycle_running = False
            self._cycle_lock.release()

    def _after_cycle(self, result: CycleResult) -> None:
        self.health.last_status, self.health.last_run_id = result.status, result.run_id
        failed = result.status == "failed"
        self.health.failed_cycles = self.health.failed_cycles + 1 if failed else 0
        # The cycle tripped the breaker (and set dqm_paused) if the run was critical.
        self.refresh_gauges()
        log.info("cycle %s: %s%s", result.run_id, result.status,
                 f" ({result.reason})" if result.reason else "")
        sd_notify(f"STATUS=last run {result.run_id}: {result.status}; next cycle {self.next_run()}")

    def check_freshness(self) -> None:

        try:
            with cycle_lock(self.cfg):  # the warehouse is one writer's while a cycle runs
                check_freshness(self.cfg, self.metrics)
        except Busy:
            log.info("freshness check skipped: a cycle holds the warehouse")

    def refresh_gauges(self) -> None:
        """Feed and pause gauges from stored state; best effort, the next cycle retries."""

        try:
            with cycle_lock(self.cfg):
                refresh_state_gauges(self.cfg, self.metrics)
        except Busy:
            log.info("gauges not refreshed: a cycle holds the warehouse")
        except Exception:
            log.exception("could not refresh the feed and pause gauges")

    def _on_job_event(self, event: SchedulerEvent) -> None:
        job_id = str(getattr(event, "job_id", ""))
        job = FRESHNESS_JOB if job_id == FRESHNESS_JOB else CYCLE_JOB  # run_now is a cycle
        if event.code == EVENT_JOB_MISSED:
            when = getattr(event, "scheduled_run_time", None)
            log.warning("job %s missed its run at %s (misfire grace %ss)", job_id, when,
                        self.cfg.scheduler.misfire_grace_s)
            self.metrics.job_missed(job)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            log.warning("job %s skipped: its previous run is still going", job_id)
            self.metrics.job_missed(job)
        else:
            log.error("job %s raised: %r", job_id, getattr(event, "exception", None))
            self.metrics.job_error(job)

    # -- HTTP ------------------------------------------------------------------------

    def healthz(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "alive", "uptime_s": round(time.time() - self.health.started, 1)}

    def readyz(self) -> tuple[int, dict[str, Any]]:
        problems = []
        if not self.scheduler.running:
            problems.append("scheduler not running")
        paused = None
        try:
            assert self.st is not None
            paused = state.paused(self.st)
        except Exception as exc:
            problems.append(f"state store unreachable: {type(exc).__name__}")
        if self.health.failed_cycles > self.cfg.scheduler.ready_max_failed_cycles:
            problems.append(f"{self.health.failed_cycles} failed cycles in a row")
        body = {
            "ready": not problems, "problems": problems, "next_run": self.next_run(),
            "cycle_running": self.health.cycle_running, "last_status": self.health.last_status,
            "paused": bool(paused),
        }
        return (200 if not problems else 503), body

    def next_run(self) -> str | None:
        job = self.scheduler.get_job(CYCLE_JOB) if self.scheduler.running else None
        return _iso(job.next_run_time if job else None)


def _check_reloadable(cfg: Config) -> None:
    """What :func:`load_config` accepts but applying ``cfg`` would trip over."""
    for spec in job_specs(cfg):
        try:
            spec.trigger(cfg)
        except Exception as exc:
            key = "cycle_cron" if spec.id == CYCLE_JOB else "freshness_cron"
            raise ConfigError(f"scheduler.{key}: {spec.cron!r}: {_one_line(exc)}") from exc
    if not isinstance(logging.getLevelName(cfg.logging.level.upper()), int):
        raise ConfigError(f"logging.level: not a log level: {cfg.logging.level!r}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _exit(code: int) -> None:
    """Leave now: exit hooks run, but not the slow teardown of dbt's and GX's modules.

    Everything the daemon writes is committed (or, for an abandoned cycle, deliberately
    not) by the time this runs; interpreter teardown only frees memory, slowly enough to
    use up the stop bound.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def run_daemon(cfg: Config, run_now: bool = False) -> int:
    daemon = Daemon(cfg)
    try:
        daemon.start(run_now=run_now)
    except OSError as exc:  # e.g. the HTTP port is taken
        log.error("daemon not started: %s", exc)
        return 1
    _exit(daemon.wait())
    return 0  # not reached
