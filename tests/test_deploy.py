"""Deployment files under ``deploy/``: the systemd unit (verified and security-scored by
the real ``systemd-analyze``), the service user, the host and container configs (loaded
by the real config loader) and the container image/compose files (read, not built: no
Docker engine on the build machines).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs in the venv

from deploy.render_configs import render
from monitor.core.config import load_config

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "systemd" / "dqm.service"
SYSUSERS = REPO / "deploy" / "systemd" / "dqm.sysusers.conf"
HOST_CONFIG = REPO / "deploy" / "systemd" / "config.toml"
CONTAINER = REPO / "deploy" / "container"
EXEC = "/opt/dqm/.venv/bin/monitor"
MAX_EXPOSURE = 3.0


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    return found


def unit_directives(path: Path = UNIT) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file; repeated keys keep every value in order."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(directives: dict[str, list[str]], key: str) -> str:
    values = directives.get(key, [])
    assert len(values) == 1, f"{key}: expected exactly one value, got {values}"
    return values[0]


def unit_with_stub(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    """A copy of the unit whose ExecStart binary exists (``verify`` checks it)."""
    stub = tmp_path / "monitor"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert EXEC in text
    text = text.replace(EXEC, str(stub))
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    unit = tmp_path / "dqm.service"
    unit.write_text(text)
    return unit


def verify(unit: Path) -> list[str]:
    """Lines ``systemd-analyze verify`` prints about this unit (it exits 0 on warnings)."""
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    lines = (result.stdout + result.stderr).splitlines()
    about = [ln for ln in lines if unit.name in ln or str(unit) in ln]
    if result.returncode != 0:
        about.append(f"exit {result.returncode}: {lines}")
    return about


# --- systemd unit -------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert verify(unit_with_stub(tmp_path)) == []


def test_verify_check_reports_a_broken_directive(tmp_path: Path) -> None:
    """The check above can fail: a bad value is reported even though verify exits 0."""
    unit = unit_with_stub(tmp_path, ("KillMode=mixed", "KillMode=bogus"))
    problems = verify(unit)
    assert any("bogus" in p for p in problems), problems


def test_unit_security_exposure_is_at_most_3() -> None:
    analyze = _systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=30", str(UNIT)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "LC_ALL": "C"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for dqm\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:]
    score = float(match.group(1))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= MAX_EXPOSURE

    report = subprocess.run(
        [analyze, "security", "--offline=yes", "--json=short", str(UNIT)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    checks = {c["name"]: c["set"] for c in yaml.safe_load(report.stdout)}
    for name in (
        "NoNewPrivileges=", "MemoryDenyWriteExecute=", "ProtectSystem=", "ProtectHome=",
        "PrivateTmp=", "PrivateDevices=", "ProtectKernelTunables=", "ProtectKernelModules=",
        "ProtectKernelLogs=", "ProtectClock=", "ProtectHostname=", "LockPersonality=",
        "RestrictRealtime=", "RestrictNamespaces=~user", "UMask=", "User=/DynamicUser=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN", "SystemCallFilter=~@privileged",
        "RestrictAddressFamilies=~AF_PACKET", "ProtectProc=",
    ):
        assert checks.get(name) is True, name


def test_unit_declares_the_required_settings() -> None:
    d = unit_directives()
    expected = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure",
        "User": "dqm", "StateDirectory": "dqm", "ConfigurationDirectory": "dqm",
        "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes", "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
        "ProtectClock": "yes", "ProtectHostname": "yes", "ProtectProc": "invisible",
        "UMask": "0077", "EnvironmentFile": "-/etc/dqm/secrets.env",
        "ExecStart": f"{EXEC} --config /etc/dqm/config.toml run",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in expected.items():
        assert one(d, key) == value, key
    assert d["SystemCallFilter"][0] == "@system-service"
    assert int(one(d, "WatchdogSec")) > 0
    env = d["Environment"]
    assert "DBT_SEND_ANONYMOUS_USAGE_STATS=false" in env
    assert "MONITOR_CONFIG=/etc/dqm/config.toml" in env


def test_stop_timeouts_exceed_the_daemons_graceful_stop_bound() -> None:
    bound = tomllib.loads(HOST_CONFIG.read_text())["scheduler"]["stop_timeout_s"]
    assert bound == tomllib.loads((CONTAINER / "config.toml").read_text())["scheduler"][
        "stop_timeout_s"
    ]
    stop_sec = int(one(unit_directives(), "TimeoutStopSec"))
    grace = _compose()["services"]["dqm"]["stop_grace_period"]
    assert stop_sec > bound
    assert grace == f"{stop_sec}s"


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if not sysusers:
        pytest.skip("systemd-sysusers not installed (Debian: systemd)")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True,
        timeout=60,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text()
    (entry,) = [ln for ln in passwd.splitlines() if ln.startswith("dqm:")]
    fields = entry.split(":")
    assert int(fields[2]) < 1000  # a system user
    assert fields[5:] == ["/var/lib/dqm", "/usr/sbin/nologin"]
    assert one(unit_directives(), "User") == fields[0]


# --- MemoryDenyWriteExecute= with the real stack -------------------------------------

# systemd's MemoryDenyWriteExecute= filter (seccomp-util.c) as classic BPF, x86_64:
# EPERM for mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC,
# shmat with SHM_EXEC.
_LD, _JEQ, _AND, _RET = 0x20, 0x15, 0x54, 0x06
_ALLOW, _EPERM = 0x7FFF0000, 0x00050000 | 1
_ARG2 = 16 + 8 * 2  # low 32 bits of args[2] in struct seccomp_data


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


_MDWE_PROGRAM = b"".join([
    _ins(_LD, 0, 0, 0),            # 0: syscall number
    _ins(_JEQ, 4, 0, 9),           # 1: mmap -> 6
    _ins(_JEQ, 7, 0, 10),          # 2: mprotect -> 10
    _ins(_JEQ, 6, 0, 329),         # 3: pkey_mprotect -> 10
    _ins(_JEQ, 9, 0, 30),          # 4: shmat -> 14
    _ins(_RET, 0, 0, _ALLOW),      # 5
    _ins(_LD, 0, 0, _ARG2),        # 6: mmap prot
    _ins(_AND, 0, 0, 6),           # 7: PROT_WRITE | PROT_EXEC
    _ins(_JEQ, 9, 8, 6),           # 8: both -> 18 deny, else 17
    _ins(_RET, 0, 0, _ALLOW),      # 9
    _ins(_LD, 0, 0, _ARG2),        # 10: mprotect prot
    _ins(_AND, 0, 0, 4),           # 11: PROT_EXEC
    _ins(_JEQ, 5, 4, 4),           # 12: -> 18 deny, else 17
    _ins(_RET, 0, 0, _ALLOW),      # 13
    _ins(_LD, 0, 0, _ARG2),        # 14: shmat flags
    _ins(_AND, 0, 0, 0o100000),    # 15: SHM_EXEC
    _ins(_JEQ, 1, 0, 0o100000),    # 16: -> 18 deny, else 17
    _ins(_RET, 0, 0, _ALLOW),      # 17
    _ins(_RET, 0, 0, _EPERM),      # 18
])


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_mdwe_filter() -> None:
    """preexec_fn: apply the filter in the child; it survives exec."""
    buf = ctypes.create_string_buffer(_MDWE_PROGRAM)
    prog = _SockFprog(len(_MDWE_PROGRAM) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


_WORKLOAD = """
import ctypes, mmap, os, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("W+X mapping allowed")
except OSError:
    print("W+X mapping denied")
cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
assert cb(1) == 2
import duckdb
con = duckdb.connect(sys.argv[1] + "/w.duckdb")
con.execute("create table t as select range id, (range % 97)::varchar k from range(500000)")
n = con.execute("select count(*) from t a join (select distinct k from t) b using (k)").fetchone()
assert n == (500000,), n
con.close()
import sqlalchemy as sa
with sa.create_engine("sqlite:///" + sys.argv[1] + "/s.db").begin() as c:
    assert c.execute(sa.text("select 1")).scalar() == 1
import numpy as np, scipy.stats
assert abs(scipy.stats.zscore(np.arange(5.0))[0] + 1.414) < 0.01
import great_expectations as gx
import pandas as pd
ctx = gx.get_context(mode="ephemeral")
batch = (ctx.data_sources.add_pandas("p").add_dataframe_asset("d")
         .add_batch_definition_whole_dataframe("b")
         .get_batch(batch_parameters={"dataframe": pd.DataFrame({"a": [1, None]})}))
assert not batch.validate(gx.expectations.ExpectColumnValuesToNotBeNull(column="a")).success
from dbt.cli.main import dbtRunner
res = dbtRunner().invoke(["build", "--project-dir", sys.argv[1] + "/proj",
                          "--profiles-dir", sys.argv[1] + "/proj", "--quiet"])
assert res.success, res.exception
print("stack ok")
"""


def test_memory_deny_write_execute_keeps_the_python_stack_working(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes is safe: CPython, ctypes callbacks, DuckDB, SQLite,
    scipy, GX and a dbt-duckdb build all run under systemd's equivalent filter."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the seccomp program above is for x86_64 Linux")
    proj = tmp_path / "proj"
    (proj / "models").mkdir(parents=True)
    (proj / "dbt_project.yml").write_text('name: mdwe\nversion: "1.0"\nprofile: mdwe\n')
    (proj / "profiles.yml").write_text(
        "mdwe:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {tmp_path / 'dbt.duckdb'}\n      threads: 2\n"
    )
    (proj / "models" / "m.sql").write_text("select range as id from range(1000)\n")
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
           "GX_ANALYTICS_ENABLED": "false"}
    result = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, str(tmp_path)], capture_output=True, text=True,
        timeout=180, env=env, cwd=tmp_path, preexec_fn=_install_mdwe_filter,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "W+X mapping denied" in result.stdout  # the filter was really active
    assert "stack ok" in result.stdout


# --- configs ------------------------------------------------------------------------


def _keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in data.items():
        name = f"{prefix}{key}"
        out |= _keys(value, name + ".") if isinstance(value, dict) else {name}
    return out


@pytest.mark.parametrize(
    ("path", "host"), [(HOST_CONFIG, "127.0.0.1"), (CONTAINER / "config.toml", "0.0.0.0")],
    ids=["systemd", "container"],
)
def test_deploy_configs_load_and_keep_in_step_with_the_repo_config(
    tmp_path: Path, path: Path, host: str
) -> None:
    text = path.read_text()
    target = path.parent.name
    assert text == render(target), "stale: run python deploy/render_configs.py"
    data = tomllib.loads(text)
    repo = tomllib.loads((REPO / "config.toml").read_text())
    assert _keys(data) == _keys(repo), "keys differ from the repository's config.toml"
    assert data["ingest"]["feeds"] == repo["ingest"]["feeds"]
    # The real loader accepts it once /opt/dqm (the install root) holds this checkout.
    local = tmp_path / "config.toml"
    local.write_text(text.replace("/opt/dqm", str(REPO)))
    cfg = load_config(local)
    assert cfg.http.host == host and cfg.http.port == 9108
    assert cfg.logging.format == "json"
    for written in (
        cfg.warehouse.path, cfg.dbt.target_path, cfg.dbt.log_path, cfg.ingest.landing_dir,
        cfg.evidence.dir, cfg.evidence.snapshots_dir,
    ):
        assert written.is_absolute() and written.parts[:4] == ("/", "var", "lib", "dqm")
    assert cfg.state.url == "sqlite:////var/lib/dqm/state.db"


# --- container ----------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    return data


def test_dockerfile_settings() -> None:
    text = (CONTAINER / "Dockerfile").read_text()
    assert re.findall(r"(?m)^FROM (\S+)", text) == ["python:3.11-slim", "python:3.11-slim"]
    assert "--constraint constraints.txt" in text
    (user,) = re.findall(r"(?m)^USER (\S+)", text)
    assert not user.startswith(("root", "0:", "0"))
    assert re.search(r"(?m)^EXPOSE 9108$", text)
    assert re.search(r'(?m)^VOLUME \["/var/lib/dqm"\]$', text)
    assert "MONITOR_CONFIG=/etc/dqm/config.toml" in text
    assert "DBT_SEND_ANONYMOUS_USAGE_STATS=false" in text
    (health,) = re.findall(r"(?ms)^HEALTHCHECK .*?CMD (\[.*?\])$", text)
    assert "urllib.request" in health and "http://127.0.0.1:9108/healthz" in health
    assert (REPO / "constraints.txt").is_file()
    # Everything the image copies from the build context exists.
    for src in re.findall(r"(?m)^COPY (?!--from)(\S+) ", text):
        if src != ".":
            assert (REPO / src).exists(), src
    for src in re.findall(r"(?m)^COPY --from=build /src/(\S+) ", text):
        assert (REPO / src).exists(), src


def test_compose_wires_the_stack_safely() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"dqm", "prometheus", "alertmanager", "grafana"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    dqm = services["dqm"]
    assert dqm["build"] == {"context": "../..", "dockerfile": "deploy/container/Dockerfile"}
    assert dqm["read_only"] is True and dqm["cap_drop"] == ["ALL"] and dqm["init"] is True
    assert "./config.toml:/etc/dqm/config.toml:ro" in dqm["volumes"]
    # Bind-mounted sources exist (secrets and the landing zone are created by the operator).
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (CONTAINER / src).resolve().exists(), src
    prom_mounts = services["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom_mounts
    assert "../../alerts/rules:/etc/prometheus/rules:ro" in prom_mounts
    assert (
        "../../alerts/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
        in services["alertmanager"]["volumes"]
    )
    # Alertmanager's secret files are mounted exactly where its config reads them.
    am = yaml.safe_load((REPO / "alerts" / "alertmanager.yml").read_text())
    wanted = {
        cfg[key]
        for r in am["receivers"]
        for kind in ("pagerduty_configs", "slack_configs")
        for cfg in r.get(kind, [])
        for key in ("routing_key_file", "api_url_file")
        if key in cfg
    }
    mounted = {s["target"] for s in services["alertmanager"]["secrets"]}
    assert wanted == mounted
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    # Prometheus in compose scrapes the daemon by service name on the config's port.
    prom = yaml.safe_load((CONTAINER / "prometheus.yml").read_text())
    port = tomllib.loads((CONTAINER / "config.toml").read_text())["http"]["port"]
    assert prom["scrape_configs"][0]["static_configs"] == [{"targets": [f"dqm:{port}"]}]
