"""One cycle at a time per warehouse, across processes (daemon and CLI): the engine's
own lock (a file lock beside a DuckDB file, an advisory lock on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from monitor.core.config import Config
from monitor.warehouse.connection import backend_for
from monitor.warehouse.engine import Busy

__all__ = ["Busy", "cycle_lock"]


@contextmanager
def cycle_lock(cfg: Config) -> Iterator[None]:
    """One cycle at a time per warehouse, across processes (daemon and CLI)."""
    with backend_for(cfg.warehouse).cycle_lock(cfg):
        yield
