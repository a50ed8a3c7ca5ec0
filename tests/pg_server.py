"""A throwaway PostgreSQL 15 server for the tests marked ``postgres``.

Debian's binaries (``/usr/lib/postgresql/15/bin``, package ``postgresql``; scripts/test
installs it on CI). The server refuses to run as root, so when the tests run as root
the data directory belongs to an unprivileged user (``postgres``, created by the
package) and every server command runs through ``runuser``. It listens on 127.0.0.1
on a free port, with its unix socket in the temp folder, and trusts local connections
(a test server holding only generated data; no password anywhere).

Where the server cannot be started the tests skip, except under ``CI=true``: there
they fail, so a CI run never passes with the PostgreSQL suites silently skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from .ports import free_port


def _pg_bin() -> Path:
    """``MONITOR_TEST_PG_BIN``, else Debian's PostgreSQL 15, else the newest one installed
    (another Debian release packages another major version)."""
    if "MONITOR_TEST_PG_BIN" in os.environ:
        return Path(os.environ["MONITOR_TEST_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "initdb").exists() or not found:
        return preferred
    return found[-1].parent


PG_BIN = _pg_bin()
PG_USER = "monitor"  # the database role the tests connect as (a superuser of this server)
PG_DBNAME = "warehouse"
RUN_AS = "postgres"  # the OS user that owns the data directory when the tests run as root


@dataclass(frozen=True)
class PgServer:
    """Where the test server listens and the database the tests use."""

    host: str
    port: int
    user: str
    dbname: str
    socket_dir: Path

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg2, the driver dbt-postgres uses)."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def dsn(self, dbname: str | None = None) -> str:
        """libpq connection string."""
        return (f"host={self.host} port={self.port} user={self.user} "
                f"dbname={dbname or self.dbname}")

    def env(self) -> dict[str, str]:
        """The variables pipeline/profiles.yml's `postgres` target reads."""
        return {
            "MONITOR_PG_HOST": self.host,
            "MONITOR_PG_PORT": str(self.port),
            "MONITOR_PG_USER": self.user,
            "MONITOR_PG_DBNAME": self.dbname,
        }


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", RUN_AS, "--", *cmd]


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        _as_server_user(cmd), check=True, capture_output=True, text=True, **kwargs
    )


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true (the PostgreSQL suites must run there)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL test server unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL test server unavailable: {reason}", allow_module_level=True)


def _why_not() -> str | None:
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            return f"{PG_BIN / tool} missing (Debian package postgresql; scripts/test installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no {RUN_AS!r} user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def start_server(settings: Mapping[str, str] | None = None) -> Iterator[PgServer]:
    """Start a server in a fresh temp dir; yield it; stop it and delete the dir.
    ``settings``: more server settings (``-c name=value``), e.g. the bench's memory."""
    why = _why_not()
    if why:
        unavailable(why)
    # /tmp when root: the server user must be able to reach the folder (a root TMPDIR
    # such as /root/tmp may not be)
    root = Path(tempfile.mkdtemp(prefix="dq-monitor-pg-",
                                 dir="/tmp" if os.geteuid() == 0 else None))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if os.geteuid() == 0:
        server_user = pwd.getpwnam(RUN_AS)
        os.chown(root, server_user.pw_uid, server_user.pw_gid)
        os.chown(sock, server_user.pw_uid, server_user.pw_gid)
    port = 0
    started = False
    try:
        try:
            _run([str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync"])
            for attempt in range(3):  # the free port may be taken before the server binds it
                port = free_port()
                try:
                    _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                          "-t", "60", "-o",
                          f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off"
                          " -c synchronous_commit=off -c full_page_writes=off"
                          + "".join(f" -c {k}={v}" for k, v in (settings or {}).items()),
                          "start"])
                    break
                except subprocess.CalledProcessError:
                    if attempt == 2:
                        raise
            started = True
            _run(["/usr/bin/psql" if Path("/usr/bin/psql").exists() else str(PG_BIN / "psql"),
                  "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", "postgres",
                  "-v", "ON_ERROR_STOP=1", "-q", "-c", f"create database {PG_DBNAME}"])
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            if log.exists():
                detail += "\n" + log.read_text(errors="replace")[-2000:]
            unavailable(f"{exc}\n{detail}")
        yield PgServer(host="127.0.0.1", port=port, user=PG_USER, dbname=PG_DBNAME,
                       socket_dir=sock)
    finally:
        if started:
            subprocess.run(_as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m",
                                            "fast", "-w", "stop"]),
                           capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
