"""The daemon: APScheduler jobs, health endpoints, signals, systemd notification.

Jobs live in a persistent job store in the state store under explicit ids with
``replace_existing``, so a restart never duplicates them; ``max_instances=1`` and
coalescing keep one cycle at a time. Every merge is one warehouse transaction, so a
stop (or a crash) between or inside steps never leaves a half-merged fact.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from monitor import logs, state
from monitor.config import Config, ConfigError, load_config, state_url
from monitor.metrics import Metrics, MetricsServer

if TYPE_CHECKING:
    from monitor.cycle import CycleResult

log = logging.getLogger(__name__)

CYCLE_JOB, FRESHNESS_JOB = "pipeline_cycle", "feed_freshness"
_daemon: Daemon | None = None  # the jobs' way back to the running daemon


def cycle_job() -> None:
    """Scheduled pipeline cycle (module-level so the job store can reference it)."""
    if _daemon is not None:
        _daemon.run_cycle("schedule")


def freshness_job() -> None:
    if _daemon is not None:
        _daemon.check_freshness()


@dataclass
class Health:
    started: float = field(default_factory=time.time)
    failed_cycles: int = 0
    last_status: str = ""
    cycle_running: bool = False


class Daemon:
    """``monitor run``: owns the scheduler, the HTTP server and the metrics."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics(currency=cfg.cost.currency)
        self.metrics.declare_jobs([CYCLE_JOB, FRESHNESS_JOB])
        self.health = Health()
        self.stop_event = threading.Event()
        self._cycle_lock = threading.Lock()
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=state_url(cfg), tablename="scheduler_jobs")},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": cfg.scheduler.misfire_grace_s,
            },
            timezone=cfg.scheduler.timezone,
        )
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        self.server: MetricsServer | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, run_now: bool = False) -> None:
        global _daemon
        _daemon = self
        st = state.open_state(state_url(self.cfg))  # creates tables, checks it is reachable
        st.dispose()
        self.server = self.metrics.serve(
            self.cfg.http.host, self.cfg.http.port,
            extra_routes={"/healthz": self.healthz, "/readyz": self.readyz},
        )
        self._schedule()
        self.scheduler.start()
        self.refresh_gauges()
        log.info("daemon ready: metrics on %s, next cycle %s", self.server.url, self.next_run())
        sd_notify("READY=1")
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        if run_now:
            self.scheduler.add_job(cycle_job, id="run_now", replace_existing=True,
                                   jobstore="default", misfire_grace_time=None)

    def _schedule(self) -> None:
        s = self.cfg.scheduler
        self.scheduler.add_job(
            cycle_job, CronTrigger.from_crontab(s.cycle_cron, timezone=s.timezone),
            id=CYCLE_JOB, name="pipeline cycle", replace_existing=True,
        )
        self.scheduler.add_job(
            freshness_job, CronTrigger.from_crontab(s.freshness_cron, timezone=s.timezone),
            id=FRESHNESS_JOB, name="feed freshness", replace_existing=True,
        )

    def wait(self) -> int:
        """Block until SIGTERM/SIGINT; reload on SIGHUP. Returns the exit code."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        while not self.stop_event.wait(0.5):
            pass
        return self.stop()

    def stop(self) -> int:
        sd_notify("STOPPING=1")
        bound = self.cfg.scheduler.stop_timeout_s
        log.info("stopping: waiting up to %ss for the current step", bound)
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + bound
        while self.health.cycle_running and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.server:
            self.server.shutdown()
        if self.health.cycle_running:
            # Abandon the cycle: its open warehouse transaction is never committed, and
            # the next start records the run as interrupted.
            log.warning("cycle still running after %ss: abandoning it", bound)
            logging.shutdown()
            os._exit(0)
        log.info("stopped")
        return 0

    def _on_stop(self, signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.stop_event.set()

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        """Reload the config: schedule, rules and checks change; HTTP needs a restart."""
        assert self.cfg.source is not None
        try:
            new = load_config(self.cfg.source)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        if (new.http, new.state) != (self.cfg.http, self.cfg.state):
            log.warning("SIGHUP: [http] and [state] changes take effect after a restart")
        self.cfg = new
        logs.setup(new.logging)
        self._schedule()
        log.info("SIGHUP: config reloaded from %s", new.source)

    def _watchdog(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if not usec:
            return
        while not self.stop_event.wait(usec / 2e6):
            sd_notify("WATCHDOG=1")

    # -- jobs ------------------------------------------------------------------------

    def run_cycle(self, trigger: str) -> None:
        from monitor.cycle import Busy
        from monitor.cycle import run_cycle as _run

        if self.stop_event.is_set():
            return
        with self._cycle_lock:
            self.health.cycle_running = True
            try:
                result = _run(self.cfg, trigger=trigger, metrics=self.metrics)
            except Busy as exc:
                log.warning("cycle skipped: %s", exc)
                return
            finally:
                self.health.cycle_running = False
        self.health.last_status = result.status
        self._trip_breaker(result)
        self.health.failed_cycles = self.health.failed_cycles + 1 if result.status == "failed" else 0
        self.refresh_gauges()

    def _trip_breaker(self, result: CycleResult) -> None:
        from monitor.cycle import critical_reason
        from monitor.operations import pause

        reason = critical_reason(result)
        if reason is None or not self.cfg.scheduler.pause_on_critical:
            return
        st = state.open_state(state_url(self.cfg))
        try:
            if pause(st, reason, result.run_id):
                log.error("circuit breaker: downstream paused: %s", reason)
        finally:
            st.dispose()

    def check_freshness(self) -> None:
        from monitor.observe import check_freshness

        check_freshness(self.cfg, self.metrics)

    def refresh_gauges(self) -> None:
        from monitor.observe import refresh_state_gauges

        try:
            refresh_state_gauges(self.cfg, self.metrics)
        except Exception:  # gauges are best effort; the next cycle retries
            log.exception("could not refresh gauges from the state store")

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        job = event.job_id if event.job_id in (CYCLE_JOB, FRESHNESS_JOB) else CYCLE_JOB
        if event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)
            self.metrics.job_missed(job)
        else:
            log.error("job %s raised: %r", event.job_id, event.exception)
            self.metrics.job_error(job)

    # -- HTTP ------------------------------------------------------------------------

    def healthz(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "alive", "uptime_s": round(time.time() - self.health.started, 1)}

    def readyz(self) -> tuple[int, dict[str, Any]]:
        problems = []
        if not self.scheduler.running:
            problems.append("scheduler not running")
        try:
            st = state.open_state(state_url(self.cfg))
            with st.connect() as conn:
                conn.exec_driver_sql("select 1")
            st.dispose()
        except Exception as exc:
            problems.append(f"state store unreachable: {type(exc).__name__}")
        if self.health.failed_cycles > self.cfg.scheduler.ready_max_failed_cycles:
            problems.append(f"{self.health.failed_cycles} failed cycles in a row")
        body = {"ready": not problems, "problems": problems, "next_run": self.next_run()}
        return (200 if not problems else 503), body

    def next_run(self) -> str | None:
        job = self.scheduler.get_job(CYCLE_JOB) if self.scheduler.running else None
        when = job.next_run_time if job else None
        return when.astimezone(UTC).isoformat() if when else None


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
            sock.sendall(message.encode())
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)


def run_daemon(cfg: Config, run_now: bool = False) -> int:
    daemon = Daemon(cfg)
    daemon.start(run_now=run_now)
    return daemon.wait()


