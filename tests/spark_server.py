"""A throwaway Spark Connect server for the tests marked ``spark``.

PyPI's ``pyspark==4.0.1`` (the ``spark`` extra; scripts/setup installs it) ships the
server's jars: ``spark-submit --class ...SparkConnectServer spark-internal`` on
``local[2]``, with Java 17 (scripts/test installs Debian's JRE where ``java`` is
missing). It listens on 127.0.0.1 on a free port, with its warehouse folder, Hive
metastore (embedded Derby) and logs in a temp dir, so tables survive a client's restart
as they do on a real cluster. The Spark UI is off.

Where the server cannot start the tests skip, except under ``CI=true``: there they fail,
so a CI run never passes with the Spark suites silently skipped.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .ports import free_port

CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class SparkServer:
    """Where the test server listens and the folders it writes."""

    host: str
    port: int
    warehouse_dir: Path
    root: Path

    @property
    def url(self) -> str:
        """The Spark Connect URL (``[warehouse] url``, ``SPARK_REMOTE``)."""
        return f"sc://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The variable dbt-spark's session method (and pyspark) read."""
        return {"SPARK_REMOTE": self.url}


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true (the Spark suites must run there)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Spark Connect test server unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"Spark Connect test server unavailable: {reason}", allow_module_level=True)


def spark_home() -> Path | None:
    """``SPARK_HOME``, else the pyspark package's own folder (PyPI's pyspark ships the
    jars and ``bin/spark-submit``)."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    try:
        import pyspark  # the `spark` extra
    except ImportError:
        return None
    return Path(pyspark.__file__).parent


def _why_not(home: Path | None) -> str | None:
    if home is None:
        return "pyspark is not installed (the `spark` extra; scripts/setup installs it)"
    if not (home / "bin" / "spark-submit").exists():
        return f"{home / 'bin' / 'spark-submit'} missing"
    if not (home / "jars").is_dir() or not list((home / "jars").glob("spark-connect_*.jar")):
        return f"no spark-connect jar in {home / 'jars'}"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "java missing (Debian package openjdk-17-jre-headless; scripts/test installs it)"
    return None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def server_command(home: Path, port: int, root: Path) -> list[str]:
    """The ``spark-submit`` line that starts a Connect server (also what the README
    shows)."""
    warehouse = root / "warehouse"
    metastore = root / "metastore_db"
    confs = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={metastore};create=true",
        "spark.ui.enabled": "false",
        "spark.driver.memory": os.environ.get("MONITOR_TEST_SPARK_MEMORY", "2g"),
        "spark.sql.shuffle.partitions": "4",
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={root}",
    }
    cmd = [str(home / "bin" / "spark-submit"), "--class", CONNECT_CLASS,
           "--master", "local[2]"]
    for key, value in confs.items():
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, "spark-internal"]


def _die_with_parent() -> None:
    """In the server's process before its exec: SIGTERM once the process that started it
    is gone (a run killed by a timeout skips the stop below), so no JVM of ~1-2 GiB
    outlives it. Linux's PR_SET_PDEATHSIG survives spark-submit's exec of java."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def start_server() -> Iterator[SparkServer]:
    """Start a server in a fresh temp dir; yield it once it accepts connections; stop it
    and delete the dir."""
    home = spark_home()
    why = _why_not(home)
    if why:
        unavailable(why)
    assert home is not None
    root = Path(tempfile.mkdtemp(prefix="dq-monitor-spark-"))
    log = root / "server.log"
    port = free_port()
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOG_DIR": str(root),
           "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("SPARK_REMOTE", None)  # spark-submit refuses to start a server with it set
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(server_command(home, port, root), cwd=root, env=env,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                unavailable(f"the server did not listen on {port} "
                            f"(exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield SparkServer(host="127.0.0.1", port=port, warehouse_dir=root / "warehouse",
                          root=root)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
