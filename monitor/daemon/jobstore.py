"""The persistent job store: which jobs the daemon keeps, and their next run."""

from __future__ import annotations

import logging
import pickle
from datetime import UTC, datetime

import sqlalchemy as sa
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from monitor.core.config import Config, state_url

log = logging.getLogger(__name__)


CYCLE_JOB, FRESHNESS_JOB, RUN_NOW_JOB = "pipeline_cycle", "feed_freshness", "run_now"


JOB_TABLE = "scheduler_jobs"


# Job functions as versions before the subpackages stored them in the job store.
_MOVED_JOB_FUNCS = {f"monitor.scheduler:{f}": f"monitor.daemon.scheduler:{f}"
                    for f in ("cycle_job", "freshness_job")}


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when else None


def next_scheduled_run(st: sa.Engine) -> str | None:
    """The next cycle as stored in the job store (None: no daemon has scheduled one)."""
    jobs = sa.table(JOB_TABLE, sa.column("id"), sa.column("next_run_time"))
    try:
        with st.connect() as conn:
            ts = conn.execute(
                sa.select(jobs.c.next_run_time).where(jobs.c.id == CYCLE_JOB)
            ).scalar()
    except sa.exc.DBAPIError:  # no daemon has run against this state store yet
        return None
    return _iso(datetime.fromtimestamp(float(ts), UTC)) if ts is not None else None


def migrate_job_funcs(st: sa.Engine) -> int:
    """Point jobs an older version stored at this module's functions, so an upgrade keeps
    them and their next run time (APScheduler drops a job whose function it cannot
    import). Returns the jobs rewritten."""
    if not sa.inspect(st).has_table(JOB_TABLE):
        return 0
    table = sa.Table(JOB_TABLE, sa.MetaData(), autoload_with=st)
    moved = 0
    with st.begin() as conn:
        for row in conn.execute(sa.select(table.c.id, table.c.job_state)).all():
            job = pickle.loads(row.job_state)  # our own table, written by APScheduler
            if job.get("func") in _MOVED_JOB_FUNCS:
                job["func"] = _MOVED_JOB_FUNCS[job["func"]]
                conn.execute(table.update().where(table.c.id == row.id).values(
                    job_state=pickle.dumps(job, pickle.HIGHEST_PROTOCOL)))
                moved += 1
    if moved:
        log.info("%d stored job(s) moved to monitor.daemon.scheduler", moved)
    return moved


def stored_jobs(cfg: Config) -> list[Job]:
    """The jobs in the persistent job store, read through a paused scheduler."""
    sched = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=state_url(cfg), tablename=JOB_TABLE)},
        timezone=cfg.scheduler.timezone,
    )
    sched.start(paused=True)
    try:
        return list(sched.get_jobs())
    finally:
        sched.shutdown(wait=False)
