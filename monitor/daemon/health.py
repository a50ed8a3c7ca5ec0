"""What the daemon tells about its health: the /healthz and /readyz state, and systemd."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Health:
    started: float = field(default_factory=time.time)
    failed_cycles: int = 0
    last_status: str = ""
    last_run_id: str = ""
    cycle_running: bool = False


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
