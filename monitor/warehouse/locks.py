"""The two cross-process locks the engines' cycle locks are made of: a flock on a file
and PostgreSQL's session advisory lock. Both never wait, and both go when the process
dies (the kernel drops the flock; the server ends the session)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from monitor.warehouse.engine import Busy

__all__ = ["advisory_lock", "file_lock_at"]


@contextmanager
def file_lock_at(path: Path, busy: str) -> Iterator[None]:
    """flock on ``path`` for the block; :class:`Busy` with ``busy`` if another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Busy(busy) from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def advisory_lock(engine: sa.Engine, key: int, busy: str) -> Iterator[None]:
    """pg_try_advisory_lock(``key``) on a connection of ``engine`` kept open for the
    block; :class:`Busy` with ``busy`` if another session holds it."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        got = conn.execute(sa.text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        if not got:
            raise Busy(busy)
        try:
            yield
        finally:
            conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": key})
