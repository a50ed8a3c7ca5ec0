"""The Spark Connect session of a ``[warehouse] url = "sc://host:port"`` warehouse.

Spark Connect keeps the JVM on the cluster: the monitor process holds a thin gRPC
client. One session per URL is kept for the process (a session is a server-side
resource; opening one per step would leak them on the server until it times them out).
A token (a secret) never comes from the file: ``password_env`` names the environment
variable that holds it, and it is appended to the URL the client sees.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql.connect.session import SparkSession

__all__ = ["SparkUrlError", "connect_url", "spark_session", "stop_sessions"]

# sc://host[:port][/;key=value;...] (the Spark Connect client's format)
_URL = re.compile(r"sc://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\])(?::(?P<port>\d{1,5}))?"
                  r"(?:/(?P<params>(?:;[A-Za-z_]+=[^;/\s]*)*))?")
_PARAMS = frozenset({"use_ssl", "user_id", "user_agent", "session_id", "grpc_max_message_size"})
#: Settings of every session the monitor opens, as dbt's profile sets them for its own
#: (pipeline/profiles.yml, target spark). The Hive metastore cannot filter partitions on
#: a column whose name starts with `_` (the dbt project partitions staging claims by
#: _batch_id and the versions by _publish_seq on Spark): with the fallback Spark lists the
#: table's partitions and prunes them itself instead of failing the query.
SESSION_CONF: dict[str, bool | float | int | str | None] = {
    "spark.sql.hive.metastorePartitionPruningFallbackOnException": "true",
}
_LOCK = threading.Lock()
_SESSIONS: dict[str, SparkSession] = {}


class SparkUrlError(ValueError):
    """A ``[warehouse] url`` that is not a usable Spark Connect URL."""


def connect_url(url: str, password_env: str = "") -> str:
    """The URL the client connects with: validated, and with the token from the
    environment variable ``password_env`` names (never from the file)."""
    match = _URL.fullmatch(url)
    if not match:
        raise SparkUrlError(f"[warehouse] url {url!r}: expected sc://host:port "
                            "(a Spark Connect endpoint, e.g. sc://127.0.0.1:15002)")
    params = [p for p in (match["params"] or "").split(";") if p]
    for param in params:
        key = param.split("=", 1)[0]
        if key == "token":
            raise SparkUrlError("[warehouse] url holds a token: put it in an environment "
                                "variable and name that variable in [warehouse] password_env")
        if key not in _PARAMS:
            raise SparkUrlError(f"[warehouse] url: unknown Spark Connect parameter {key!r} "
                                f"(known: {', '.join(sorted(_PARAMS))})")
    if not password_env:
        return url
    token = os.environ.get(password_env)
    if not token:
        raise SparkUrlError(f"[warehouse] password_env names {password_env}, which is not "
                            "set in the environment")
    base = url if match["params"] is not None else url.rstrip("/") + "/"
    return f"{base};token={urllib.parse.quote(token, safe='')}"


def spark_session(url: str, password_env: str = "") -> SparkSession:
    """The process's session on ``url`` (created on first use)."""
    from pyspark.sql.connect.session import SparkSession  # the `spark` extra

    remote = connect_url(url, password_env)
    with _LOCK:
        session = _SESSIONS.get(remote)
        if session is None or session.is_stopped:
            session = SparkSession.builder.remote(remote).config(map=SESSION_CONF).create()
            _SESSIONS[remote] = session
        return session


def stop_sessions() -> None:
    """Release every session of the process (at exit, and between tests)."""
    with _LOCK:
        for session in _SESSIONS.values():
            session.stop()
        _SESSIONS.clear()
