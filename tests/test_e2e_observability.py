"""Observability end to end: the real daemon, a real Prometheus and a real Alertmanager.

One stack per module, all on 127.0.0.1 with data under tmp_path:

* generated feeds (``dqm_demo.generate``), landed day by day (``dqm_demo.demo.land_day``);
  one in-process cycle a week back seeds drift history (the daemon scores each point
  against earlier days of the same weekday, so a one-day run alone has no z-scores);
* ``monitor run --run-now`` as a subprocess, cycling every minute, with a daemon alert
  rule (whole-cycle runtime above 0.5 s) and an ``alertmanager`` sink;
* Prometheus scraping it every second with the shipped scrape config and a copy of the
  shipped rules where ``DqmRunSlow``'s threshold is lowered to 1 s;
* Alertmanager with the shipped routes and inhibitions, receivers swapped for a local
  webhook server (``/pager`` and ``/chat``), group timers shortened.

Measured times are printed (run with ``-s`` to see them). Skipped, saying why, when a
binary is missing (Debian packages ``prometheus`` and ``prometheus-alertmanager``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs in the venv
from prometheus_client.parser import text_string_to_metric_families

from dqm_demo.demo import land_day
from dqm_demo.generate import generate
from monitor.core.config import load_config
from monitor.cycle.run import run_cycle
from monitor.observe.drift import is_month_end

from .conftest import REPO, write_config
from .ports import free_port

pytestmark = pytest.mark.slow

ALERTS = REPO / "alerts"
RULES = ALERTS / "rules" / "dqm.rules.yml"
PROM_CONFIG = ALERTS / "prometheus.yml"
AM_CONFIG = ALERTS / "alertmanager.yml"
DASHBOARD = ALERTS / "grafana" / "dashboards" / "dqm.json"

START = date(2026, 3, 2)  # first generated day; the data's own dates do not matter here
CLAIMS_PER_DAY = 300
# The copy of the rules lowers DqmRunSlow's threshold from 1h to 1s, which every cycle
# crosses. A run-wide alert, because a model's warnings are inhibited while that model
# has a critical alert (DqmDriftCritical fires on the short seeded history).
SLOW_RULE = "expr: dqm_run_duration_seconds > 3600\n"
SLOW_RULE_LOW = "expr: dqm_run_duration_seconds > 1\n"
DAEMON_RULE = "e2e_cycle_slow"  # the daemon's own rule: a whole cycle above 0.5 s
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{' / '.join(names)} not installed (Debian: prometheus, prometheus-alertmanager)")


def _monitor_cli() -> str:
    venv = REPO / ".venv" / "bin" / "monitor"
    found = str(venv) if venv.exists() else shutil.which("monitor")
    if not found:
        pytest.skip("the monitor CLI is not installed (.venv/bin/monitor)")
    return found


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
        return body


def _get_json(url: str) -> Any:
    return json.loads(_get(url))


class Processes:
    """Child processes with logs in a folder; stopped by pid, never by name."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with (self.logdir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.procs[name] = proc
        return proc

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def diagnostics(self) -> str:
        return "\n".join(f"--- {n} log tail ---\n{self.tail(n, 15)}" for n in self.procs)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()  # the daemon stops gracefully on SIGTERM
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Notification:
    """One webhook POST from Alertmanager."""

    receiver: str  # the URL path: the Alertmanager receiver it was routed to
    at: float  # time.monotonic() on receipt
    body: dict[str, Any]


class WebhookReceiver:
    """Alertmanager's webhook target: records every notification."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Notification] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hooks._lock:
                    hooks._received.append(
                        Notification(self.path.strip("/"), time.monotonic(), body)
                    )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self._received)

    def alerts(self, **labels: str) -> list[tuple[Notification, dict[str, Any]]]:
        """(notification, alert) pairs of firing alerts whose labels include ``labels``."""
        return [
            (n, a) for n in self.received() for a in n.body["alerts"]
            if a["status"] == "firing" and labels.items() <= a["labels"].items()
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    """The running stack and what setting it up measured."""

    procs: Processes
    hooks: WebhookReceiver
    daemon_url: str
    daemon_target: str
    prom_api: str
    am_url: str
    times: dict[str, float] = field(default_factory=dict)  # seconds since daemon launch
    launched: float = 0.0

    def since_launch(self) -> float:
        return time.monotonic() - self.launched

    def wait_for(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``check`` until truthy; fail naming ``what`` with the process logs."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.procs.check_alive()
            try:
                value = check()
                if value:
                    return value
            except (OSError, KeyError, ValueError) as exc:  # not up yet / not scraped yet
                last = exc
            time.sleep(0.25)
        pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last})\n"
                    + self.procs.diagnostics())

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prom_api}/query?" + urllib.parse.urlencode({"query": promql})
        data = _get_json(url)
        assert data["status"] == "success", (promql, data)
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def daemon_samples(self) -> dict[str, float]:
        """The daemon's /metrics as ``name{k="v",...}`` -> value (labels sorted)."""
        out = {}
        for fam in text_string_to_metric_families(_get(self.daemon_url + "/metrics").decode()):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
        return out

    def runs(self) -> int:
        """Cycles the daemon has finished (any status)."""
        return int(sum(v for k, v in self.daemon_samples().items()
                       if k.startswith("dqm_runs_total{")))


def _prometheus_config(daemon_target: str, am_port: int, rules: Path) -> dict[str, Any]:
    """The shipped config (scrape job, relabelling) with test addresses and 1 s timers."""
    config: dict[str, Any] = yaml.safe_load(PROM_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{am_port}"]}
    ]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [daemon_target]}]
    return config


def _alertmanager_config(hook_port: int) -> dict[str, Any]:
    """The shipped routes and inhibitions; receivers are local webhooks named alike."""
    config: dict[str, Any] = yaml.safe_load(AM_CONFIG.read_text())
    config["route"].update(group_wait="1s", group_interval="1s")
    config["receivers"] = [
        {"name": r["name"],
         "webhook_configs": [{"url": f"http://127.0.0.1:{hook_port}/{r['name']}"}]}
        for r in config["receivers"]
    ]
    return config


def _without_alerting(toml: str) -> str:
    """``toml`` without its ``[alerting]`` tables: the test sets its own rules and sink."""
    out, skipping = [], False
    for line in toml.splitlines(keepends=True):
        header = re.match(r"\[\[?\s*([\w.]+)", line)
        if header:
            skipping = header.group(1).split(".")[0] == "alerting"
        if not skipping:
            out.append(line)
    return "".join(out)


def _daemon_alerting(am_port: int) -> str:
    return f"""
[alerting]
backoff_base_s = 1.0
backoff_max_s = 5.0

[[alerting.rules]]
name = "{DAEMON_RULE}"
kind = "runtime"
scope = "run"
threshold = 0.5
severity = "critical"

[[alerting.sinks]]
name = "alertmanager"
kind = "alertmanager"
url = "http://127.0.0.1:{am_port}"
timeout_s = 5.0
"""


def panel_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for every panel target.

    Template variables take their "All" value ``.*`` (the dashboard's ``allValue``);
    Grafana's interval variables get fixed durations.
    """
    data = json.loads(DASHBOARD.read_text())
    panels = []
    for p in data["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))  # panels nested in collapsed rows
    out = []
    for p in panels:
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            expr = re.sub(r"\$\{\w+(?::\w+)?\}|\$\w+", ".*", expr)
            out.append((f"{p['id']} {p['title']} [{t['refId']}]", expr))
    return out


# --- the stack ----------------------------------------------------------------------


def _seed_history(cfg_path: Path, feeds: Path) -> None:
    """Day 1, as a cycle on the same weekday 1 or 2 weeks ago: the baseline the daemon's
    cycles (scored as of today) are compared with. Month-end days are their own regime,
    kept out of baselines, so the seed avoids them."""
    cfg = load_config(cfg_path)
    land_day(feeds, cfg.ingest.landing_dir, START)
    today = datetime.now(UTC).date()
    seed_day = next(
        d for d in (today - timedelta(days=7), today - timedelta(days=14))
        if not is_month_end(datetime.combine(d, datetime.min.time()), cfg.drift.month_end_days)
    )
    result = run_cycle(cfg, trigger="seed", as_of=seed_day)
    assert result.status == "success", result.reason


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = _binary("prometheus")
    alertmanager = _binary("prometheus-alertmanager", "alertmanager")
    monitor = _monitor_cli()
    tmp = tmp_path_factory.mktemp("observability")
    daemon_port, prom_port, am_port = free_port(), free_port(), free_port()

    t0 = time.monotonic()
    feeds = tmp / "feeds"
    generate(feeds, START, 3, CLAIMS_PER_DAY, seed=5)
    # One seeded point is history enough here (the default wants 7 same-weekday ones).
    cfg_path = write_config(
        tmp, port=str(daemon_port), cycle_cron='"* * * * *"', stop_timeout_s="10",
        min_history="1", pause_on_critical="false",
    )
    cfg_path.write_text(_without_alerting(cfg_path.read_text()) + _daemon_alerting(am_port))
    _seed_history(cfg_path, feeds)
    seed_s = time.monotonic() - t0

    rules = tmp / "dqm.rules.yml"
    text = RULES.read_text()
    assert SLOW_RULE in text, "the shipped DqmRunSlow rule changed; update this test"
    rules.write_text(text.replace(SLOW_RULE, SLOW_RULE_LOW))
    daemon_target = f"127.0.0.1:{daemon_port}"
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(_prometheus_config(daemon_target, am_port, rules))
    )
    hooks = WebhookReceiver()
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(_alertmanager_config(hooks.port)))

    procs = Processes(tmp)
    st = Stack(procs, hooks, f"http://{daemon_target}", daemon_target,
               f"http://127.0.0.1:{prom_port}/api/v1", f"http://127.0.0.1:{am_port}")
    try:
        procs.start("alertmanager", [
            alertmanager, f"--config.file={tmp / 'alertmanager.yml'}",
            f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ])
        procs.start("prometheus", [
            prometheus, f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ])
        st.wait_for(lambda: _get(st.am_url + "/-/ready"), 30, "Alertmanager ready")
        st.wait_for(lambda: _get(f"http://127.0.0.1:{prom_port}/-/ready"), 30, "Prometheus ready")

        land_day(feeds, tmp / "data" / "landing", START + timedelta(days=1))
        env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        st.launched = time.monotonic()
        procs.start("daemon", [monitor, "--config", str(cfg_path), "run", "--run-now"],
                    cwd=tmp, env=env)
        st.wait_for(lambda: _get(st.daemon_url + "/readyz"), 60, "daemon /readyz")
        st.times["daemon ready"] = st.since_launch()
        st.wait_for(lambda: st.runs() >= 1, 120, "the first cycle (--run-now)")
        st.times["first cycle done"] = st.since_launch()
        # New files for the scheduled cycle (next minute boundary).
        land_day(feeds, tmp / "data" / "landing", START + timedelta(days=2))
        st.wait_for(lambda: st.runs() >= 2, 150, "the second, scheduled cycle")
        st.times["second cycle done"] = st.since_launch()
        st.wait_for(lambda: st.query("sum(dqm_runs_total) >= 2"), 30,
                    "Prometheus to scrape the second cycle")
        print(f"\nsetup: generate + seed cycle {seed_s:.1f}s; since daemon launch: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in st.times.items()))
        yield st
    finally:
        procs.stop_all()
        hooks.close()


# --- tests --------------------------------------------------------------------------


def test_daemon_cycles_succeed_and_export_run_gauges(stack: Stack) -> None:
    samples = stack.daemon_samples()
    assert samples['dqm_runs_total{status="success"}'] == 2, samples
    assert samples['dqm_runs_total{status="failed"}'] == 0
    assert samples["dqm_run_duration_seconds{}"] > 0.5  # the cycle's own wall time
    assert samples["dqm_last_success_timestamp_seconds{}"] > time.time() - 600
    assert samples['dqm_model_rows{layer="fct",model="fct_claims"}'] > 0
    assert samples["dqm_paused{}"] == 0
    # The seeded day a week back gives every model's runtime a z-score.
    assert any(k.startswith("dqm_drift_zscore{") and 'metric="runtime_seconds"' in k
               for k in samples)
    (up,) = stack.query(f'up{{job="dqm", instance="{stack.daemon_target}"}}')
    assert up["value"][1] == "1"


def test_prometheus_rule_fires_and_alertmanager_delivers(stack: Stack) -> None:
    """The shipped DqmRunSlow (threshold lowered, `for: 1m` kept) fires in Prometheus
    and reaches the chat receiver with its labels and annotations."""

    def prom_firing() -> dict[str, Any] | None:
        for a in _get_json(stack.prom_api + "/alerts")["data"]["alerts"]:
            if a["labels"]["alertname"] == "DqmRunSlow" and a["state"] == "firing":
                return dict(a)
        return None

    alert = stack.wait_for(prom_firing, 150, "DqmRunSlow firing in Prometheus")
    fired = time.monotonic()
    assert alert["labels"] == {
        "alertname": "DqmRunSlow", "severity": "warning", "job": "dqm",
        "instance": stack.daemon_target,
    }
    assert float(alert["value"]) > 1  # the cycle's wall time, not 0
    (note, received) = stack.wait_for(
        lambda: stack.hooks.alerts(alertname="DqmRunSlow")[:1], 60, "DqmRunSlow at the webhook"
    )[0]
    assert note.receiver == "chat" and note.body["receiver"] == "chat"
    assert note.body["groupLabels"] == {"alertname": "DqmRunSlow"}
    assert received["labels"] == alert["labels"]
    ann = received["annotations"]
    assert ann["summary"] == "dqm pipeline cycle ran slowly."
    assert ann["description"].startswith("The last dqm cycle took ")
    assert ann["description"].endswith(" (threshold 1h).")  # the text keeps the default
    assert ann["runbook_url"] == "alerts/RUNBOOK.md#dqmrunslow"
    # Warnings never page.
    assert [n.receiver for n, _ in stack.hooks.alerts(alertname="DqmRunSlow")] == ["chat"]
    print(f"\nDqmRunSlow: firing seen {fired - stack.launched:.1f}s after daemon launch; "
          f"delivered {note.at - fired:+.1f}s after firing was seen")


def test_daemon_alert_reaches_alertmanager_once(stack: Stack) -> None:
    """The daemon's own rule, sent by its alertmanager sink (API v2), is delivered to
    the pager receiver exactly once although both cycles crossed the threshold."""
    key = f"{DAEMON_RULE}:run"
    hits = stack.wait_for(lambda: stack.hooks.alerts(dedup_key=key), 30,
                          f"daemon alert {key} at the webhook")
    # Both cycles are over (the fixture waited for them); give Alertmanager a few more
    # group intervals (1 s) to show that nothing else arrives for this alert.
    time.sleep(3)
    hits = stack.hooks.alerts(dedup_key=key)
    assert len(hits) == 1, [n.body for n, _ in hits]
    note, received = hits[0]
    assert note.receiver == "pager"
    assert received["labels"] == {
        "alertname": DAEMON_RULE, "severity": "critical", "kind": "runtime", "dedup_key": key,
        "incident": key,  # it opened its incident: the shipped route groups by this label
    }
    assert note.body["groupLabels"] == {"incident": key}
    ann = received["annotations"]
    assert ann["summary"].startswith("Run took ") and "(threshold 0.5 s)" in ann["summary"]
    assert f"(rule {DAEMON_RULE}, run " in ann["description"]
    assert Path(ann["evidence"]).parts[-2:-1] == ("evidence",)
    # The daemon counted one delivery; Alertmanager still holds the alert as active.
    samples = stack.daemon_samples()
    assert samples['dqm_alerts_sent_total{severity="critical",sink="alertmanager"}'] == 1
    active = _get_json(stack.am_url + "/api/v2/alerts?filter=" + urllib.parse.quote(
        f'dedup_key="{key}"'))
    assert [a["status"]["state"] for a in active] == ["active"]
    print(f"\n{DAEMON_RULE}: delivered {note.at - stack.launched:.1f}s after daemon launch "
          f"({note.at - stack.launched - stack.times['first cycle done']:+.1f}s after the "
          "first cycle was seen done)")


def test_every_dashboard_panel_returns_data(stack: Stack) -> None:
    empty = []
    targets = panel_targets()
    assert len(targets) >= 15
    for title, expr in targets:
        if not stack.query(expr):
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard panels without data:\n" + "\n".join(empty)
    # The template variables' own queries list every layer.
    url = f"{stack.prom_api}/label/layer/values?" + urllib.parse.urlencode(
        {"match[]": "dqm_model_rows"})
    assert {"stg", "int", "fct"} <= set(_get_json(url)["data"])


def test_daemon_start_pages_nobody(stack: Stack) -> None:
    """Starting the daemon sends nothing but the two alerts this module provokes: no
    DqmPipelineStale, DqmDaemonDown or startup noise, and no alert twice. Counted as a
    list of every alert in every notification, so a duplicate delivery shows."""
    # Whatever order the tests run in: both provoked alerts have arrived (as in the tests
    # above), then a few group intervals (1 s) for anything else to arrive.
    stack.wait_for(lambda: stack.hooks.alerts(alertname="DqmRunSlow"), 180,
                   "DqmRunSlow at the webhook")
    stack.wait_for(lambda: stack.hooks.alerts(alertname=DAEMON_RULE), 30,
                   f"{DAEMON_RULE} at the webhook")
    time.sleep(3)
    got = sorted((n.receiver, a["status"], a["labels"]["alertname"])
                 for n in stack.hooks.received() for a in n.body["alerts"])
    print(f"\nwebhook notifications (receiver, status, alertname): {got}")
    # A cycle slower than its cron interval on a loaded machine makes the scheduler skip
    # a run, which is what DqmSchedulerMissedRuns is for: a chat warning the machine's
    # speed decides, allowed once. Nothing else, nothing twice, one page.
    speed = [("chat", "firing", "DqmSchedulerMissedRuns")]
    rest = [g for g in got if g not in speed]
    assert rest == [("chat", "firing", "DqmRunSlow"), ("pager", "firing", DAEMON_RULE)], got
    assert len(got) - len(rest) <= 1, got
    assert [g for g in got if g[0] == "pager"] == [("pager", "firing", DAEMON_RULE)], got


def test_promtool_lints_live_metrics_clean(stack: Stack) -> None:
    promtool = _binary("promtool")
    body = _get(stack.daemon_url + "/metrics")
    assert b"dqm_model_rows{" in body  # a populated registry, not the empty start
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                            timeout=60)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and not out.strip(), out
