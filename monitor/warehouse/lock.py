"""One cycle at a time per warehouse, across processes (daemon and CLI)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monitor.core.config import Config


class Busy(RuntimeError):
    """Another cycle holds the warehouse lock."""


@contextmanager
def cycle_lock(cfg: Config) -> Iterator[None]:
    """One cycle at a time per warehouse, across processes (daemon and CLI)."""
    lock_path = Path(str(cfg.warehouse.path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Busy(f"another cycle is running on {cfg.warehouse.path}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
