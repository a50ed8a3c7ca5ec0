"""tests/pg_server.py's policy: a missing PostgreSQL skips its tests, except under CI=true
(.ci/run), where it fails them; and the server it starts is a real PostgreSQL 15."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import pg_server
from .pg_server import PgServer


def test_missing_binaries_skip_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                          ) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(pg_server, "PG_BIN", tmp_path)
    with pytest.raises(pytest.skip.Exception, match=r"initdb missing"):
        next(pg_server.start_server())


def test_missing_binaries_fail_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                        ) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(pg_server, "PG_BIN", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"unavailable on CI: .*initdb missing"):
        next(pg_server.start_server())


@pytest.mark.postgres
def test_server_is_postgresql_15_and_takes_connections(pg_server: PgServer) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    with psycopg2.connect(pg_server.dsn()) as conn, conn.cursor() as cur:
        cur.execute("show server_version_num")
        (version,) = cur.fetchone()
        cur.execute("select current_user, current_database(), inet_server_addr()::text")
        who = cur.fetchone()
    assert 150000 <= int(version) < 160000
    assert who == (pg_server.user, pg_server.dbname, "127.0.0.1/32")
    assert pg_server.url.startswith("postgresql+psycopg2://monitor@127.0.0.1:")
