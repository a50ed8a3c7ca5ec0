"""Alert rules, their promtool unit tests, the Prometheus/Alertmanager examples and the
Grafana dashboard under ``alerts/``.

promtool/amtool checks run the real binaries; two tests start a real Prometheus and a
real Alertmanager on 127.0.0.1. Each check is skipped, with the reason, when its binary
is missing (Debian packages ``prometheus`` and ``prometheus-alertmanager``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs in the venv
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from monitor.alerting.promrules import render
from monitor.cli import main
from monitor.core.config import ConfigError, load_config

from .conftest import write_config
from .ports import free_port

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "alerts"
RULES = ALERTS / "rules" / "dqm.rules.yml"
RULE_TESTS = ALERTS / "tests" / "dqm.rules.test.yml"
PROM_CONFIG = ALERTS / "prometheus.yml"
AM_CONFIG = ALERTS / "alertmanager.yml"
RUNBOOK = ALERTS / "RUNBOOK.md"
DASHBOARD = ALERTS / "grafana" / "dashboards" / "dqm.json"
CONTAINER_PROM_CONFIG = REPO / "deploy" / "container" / "prometheus.yml"

# Series Prometheus itself adds to every target; allowed next to the contract's names.
PROMETHEUS_BUILTINS = frozenset({"up"})
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
     "group_right", "offset", "bool", "inf", "nan"}
)


def _binary(*names: str) -> str:
    """Path of the first of ``names`` on PATH, or skip the test saying which is missing."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{' / '.join(names)} not installed (Debian: prometheus, prometheus-alertmanager)")


def _run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def contract_metric_names() -> set[str]:
    """Metric names from the "Prometheus metrics" table of docs/contracts.md."""
    text = (REPO / "docs" / "contracts.md").read_text()
    names = set(re.findall(r"(?m)^\|\s*(dqm_[a-z0-9_]+)\s*\|", text))
    assert len(names) >= 10, "contracts.md metric table not found"
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels dropped)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers (and Grafana $vars inside them)
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        if m.group(2) is None and m.group(1) not in PROMQL_KEYWORDS:
            names.add(m.group(1))
    return names


def alerting_rules() -> list[dict[str, Any]]:
    return [r for g in _load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


def runbook_anchors() -> set[str]:
    """GitHub-style anchors of the runbook's headings."""
    heads = re.findall(r"(?m)^#{1,6}\s+(.+?)\s*$", RUNBOOK.read_text())
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}


def dashboard_panels() -> list[dict[str, Any]]:
    data = json.loads(DASHBOARD.read_text())
    panels: list[dict[str, Any]] = []
    for p in data["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))  # panels nested in collapsed rows
    return panels


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns a truthy value; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError as exc:  # server not up yet
            last_exc = exc
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


@pytest.fixture
def process_logs(tmp_path: Path) -> Iterator[Callable[[list[str], str], subprocess.Popen[str]]]:
    """Start binaries with logs in tmp_path; stop them (by pid) at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(cmd: list[str], name: str) -> subprocess.Popen[str]:
        log = (tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- PromQL name parser -------------------------------------------------------------


def test_promql_metric_names_ignores_functions_labels_and_keywords() -> None:
    expr = (
        'sum by (layer, model) (increase(dqm_runs_total{status="failed", x=~"$m"}[1h]))'
        " > on(instance) group_left dqm_paused offset 5m"
        " and time() - dqm_last_success_timestamp_seconds > bool 1e3"
        ' or absent(up{job="dqm"}) unless label_replace(foo:bar, "a", "$1", "b", "(.*)")'
    )
    assert promql_metric_names(expr) == {
        "dqm_runs_total", "dqm_paused", "dqm_last_success_timestamp_seconds", "up", "foo:bar"
    }


# --- rules --------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    promtool = _binary("promtool")
    result = _run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    promtool = _binary("promtool")
    result = _run(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_fail_when_a_threshold_changes(tmp_path: Path) -> None:
    """The unit tests pin the thresholds: a changed one makes promtool fail."""
    promtool = _binary("promtool")
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    text = RULES.read_text()
    assert "expr: dqm_model_cost > 5\n" in text
    (tmp_path / "rules" / RULES.name).write_text(
        text.replace("expr: dqm_model_cost > 5\n", "expr: dqm_model_cost > 10\n")
    )
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = _run(promtool, "test", "rules", tmp_path / "tests" / RULE_TESTS.name)
    assert result.returncode != 0
    assert "DqmModelCostHigh" in result.stdout + result.stderr


def test_every_rule_is_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in _load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alerting_rules()}
    assert names - fired == set(), "rules without a firing test"
    assert names - silent == set(), "rules without a not-firing test"


def test_rules_have_severity_annotations_and_runbook_sections() -> None:
    anchors = runbook_anchors()
    rules = alerting_rules()
    assert len({r["alert"] for r in rules}) == len(rules), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        path, _, anchor = ann["runbook_url"].partition("#")
        assert path == "alerts/RUNBOOK.md", name
        assert anchor == name.lower() and anchor in anchors, f"{name}: no runbook section"


def test_rules_use_only_contract_metric_names() -> None:
    allowed = contract_metric_names() | PROMETHEUS_BUILTINS
    for rule in alerting_rules():
        used = promql_metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= allowed, f"{rule['alert']}: unknown metrics {used - allowed}"


def test_runbook_names_the_operator_commands() -> None:
    text = RUNBOOK.read_text()
    for command in (
        "monitor status", "monitor triage --run ID", "monitor release BATCH --reason",
        "monitor reject BATCH --reason", "monitor resume --reason",
        "monitor rollback --to RUN --reason",
    ):
        assert command in text, command


# --- generated from the config -----------------------------------------------------

SHIPPED_OUT = "alerts/rules/dqm.rules.yml"


def _rules_by_name(text: str) -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(text)["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def _config_with(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    """The shipped config (paths made absolute), with each ``old`` line text replaced."""
    path = write_config(tmp_path)
    text = path.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def test_shipped_rules_are_what_the_shipped_config_generates() -> None:
    expected = render(load_config(REPO / "config.toml"), out=SHIPPED_OUT)
    assert RULES.read_text() == expected, f"stale: run monitor rules --out {SHIPPED_OUT}"


def test_thresholds_come_from_the_config_rules() -> None:
    rules = _rules_by_name(RULES.read_text())
    assert rules["DqmModelSlow"]["expr"] == "dqm_model_duration_seconds > 1800"  # model_runtime
    assert rules["DqmFeedLate"]["expr"].endswith(" > 129600")  # feed_stale: 36 h
    assert "(threshold 36h)" in rules["DqmFeedLate"]["annotations"]["description"]
    assert rules["DqmRunCostHigh"]["expr"] == "dqm_run_cost > 25"  # run_cost
    # metric_drift_hard: |z| >= 6 on facts only, never on runtime or cost; it pages.
    facts = 'dqm_drift_zscore{layer="fct", metric!~"runtime_seconds|cost"}'
    assert rules["DqmDriftCritical"]["expr"] == f"{facts} and abs({facts}) >= 6"
    assert rules["DqmDriftCritical"]["labels"]["severity"] == "critical"
    # metric_drift has no threshold: the detector's flag, [drift] threshold = 3; it
    # leaves out exactly the series the critical alert fires on.
    assert rules["DqmDriftWarning"]["expr"] == (
        "dqm_drift_zscore and abs(dqm_drift_zscore) >= 3 "
        f"unless ({facts} and abs({facts}) >= 6)")
    # run_failed and validation_failed are critical in config.toml: so are their alerts.
    assert rules["DqmRunFailed"]["labels"]["severity"] == "critical"
    assert rules["DqmValidationFailures"]["labels"]["severity"] == "critical"


def test_changing_a_config_threshold_changes_the_generated_expr(tmp_path: Path) -> None:
    path = _config_with(
        tmp_path,
        ("threshold = 1800          # seconds per model", "threshold = 600"),
        ("threshold = 36            # hours without a new batch", "threshold = 1.5"),
        ("threshold = 6.0\n", "threshold = 5.5\n"),
    )
    rules = _rules_by_name(render(load_config(path)))
    slow = rules["DqmModelSlow"]
    assert slow["expr"] == "dqm_model_duration_seconds > 600"
    assert "(threshold 10m)" in slow["annotations"]["description"]
    assert rules["DqmFeedLate"]["expr"] == (
        "time() - dqm_feed_last_batch_timestamp_seconds > 5400"
    )
    assert "(threshold 90m)" in rules["DqmFeedLate"]["annotations"]["description"]
    assert rules["DqmDriftCritical"]["expr"].endswith(">= 5.5")
    assert rules["DqmDriftWarning"]["expr"].endswith(">= 5.5)")
    # Untouched: alerts with no config counterpart.
    assert rules["DqmRunSlow"]["expr"] == "dqm_run_duration_seconds > 3600"


def test_config_selectors_become_label_matchers(tmp_path: Path) -> None:
    """Globs become matchers Prometheus accepts; a new run-scope rule sets DqmRunSlow."""
    path = _config_with(
        tmp_path,
        ('name = "model_runtime"\nkind = "runtime"\n',
         'name = "model_runtime"\nkind = "runtime"\nselector = "fct_*"\nlayer = "fct"\n'),
        ('name = "feed_stale"\n', 'name = "feed_stale"\nselector = "claims"\n'),
    )
    path.write_text(path.read_text() + (
        '\n[[alerting.rules]]\nname = "cycle_slow"\nkind = "runtime"\nscope = "run"\n'
        "threshold = 5400\n"
    ))
    text = render(load_config(path))
    rules = _rules_by_name(text)
    assert rules["DqmModelSlow"]["expr"] == (
        'dqm_model_duration_seconds{model=~"fct_.*", layer="fct"} > 1800'
    )
    assert '_seconds{feed="claims"} > 129600' in rules["DqmFeedLate"]["expr"]
    assert rules["DqmRunSlow"]["expr"] == "dqm_run_duration_seconds > 5400"
    promtool = _binary("promtool")
    (tmp_path / "dqm.rules.yml").write_text(text)
    result = _run(promtool, "check", "rules", tmp_path / "dqm.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_rules_for_one_alert_are_a_config_error(tmp_path: Path) -> None:
    path = _config_with(tmp_path)
    path.write_text(path.read_text() + (
        '\n[[alerting.rules]]\nname = "claims_slow"\nkind = "runtime"\n'
        'selector = "fct_claims"\nthreshold = 3600\n'
    ))
    with pytest.raises(ConfigError, match=r"model_runtime, claims_slow .*DqmModelSlow"):
        render(load_config(path))


def test_rules_command_prints_writes_and_exits_2_on_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    assert main(["--config", str(cfg), "rules"]) == 0
    printed = capsys.readouterr().out
    assert printed == render(load_config(cfg))
    out = tmp_path / "rules" / "dqm.rules.yml"
    out.parent.mkdir()
    assert main(["--config", str(cfg), "rules", "--out", str(out)]) == 0
    assert out.read_text() == render(load_config(cfg), out=str(out))
    assert f"#   monitor rules --out {out}\n" in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["dqm.rules.yml"]  # no temp file left
    capsys.readouterr()
    cfg.write_text(cfg.read_text() + '\n[[alerting.rules]]\nname = "x"\nkind = "nope"\n')
    assert main(["--config", str(cfg), "rules"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "config error" in captured.err and "nope" in captured.err


def test_deploy_configs_carry_the_shipped_alerting_rules() -> None:
    """The deploy configs (deploy/render_configs.py) cannot be loaded here (their paths
    are under /opt/dqm), but they generate the shipped rules if these sections match."""
    shipped = tomllib.loads((REPO / "config.toml").read_text())
    for target in ("systemd", "container"):
        deployed = tomllib.loads((REPO / "deploy" / target / "config.toml").read_text())
        for section in ("alerting", "drift"):
            assert deployed[section] == shipped[section], f"{target}: [{section}]"


def test_dashboard_thresholds_match_the_rules() -> None:
    """A panel that names an alert's threshold shows the generated rule's number."""
    rules = _rules_by_name(RULES.read_text())
    checked = 0
    for p in dashboard_panels():
        m = re.search(r"\(alert (\w+) at (\w+)\)", p.get("description", ""))
        if not m:
            continue
        rule = rules[m.group(1)]
        assert f"(threshold {m.group(2)})" in rule["annotations"]["description"], p["title"]
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        limit = float(re.findall(r"> (\d+(?:\.\d+)?)", rule["expr"])[0])
        assert steps[-1]["value"] == limit, p["title"]
        checked += 1
    assert checked >= 4


# --- Prometheus and Alertmanager configs --------------------------------------------


@pytest.mark.parametrize("config", [PROM_CONFIG, CONTAINER_PROM_CONFIG], ids=["host", "container"])
def test_promtool_check_config(config: Path) -> None:
    promtool = _binary("promtool")
    result = _run(promtool, "check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    data = _load_yaml(config)
    (job,) = data["scrape_configs"]
    assert job["job_name"] == "dqm"
    # Both variants move the scheduler's `job` label the same way.
    assert job["metric_relabel_configs"] == _load_yaml(PROM_CONFIG)["scrape_configs"][0][
        "metric_relabel_configs"
    ]


def test_host_prometheus_config_scrapes_the_default_metrics_port() -> None:
    data = _load_yaml(PROM_CONFIG)
    assert data["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:9108"]}]
    assert data["rule_files"] == ["rules/*.yml"]
    assert data["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:9093"
    ]


def test_amtool_check_config_and_routes() -> None:
    amtool = _binary("amtool")
    result = _run(amtool, "check-config", AM_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    for labels, receiver in (
        (["severity=critical", "alertname=DqmPaused"], "pager"),
        (["severity=warning", "alertname=DqmModelSlow", "model=fct_claims"], "chat"),
    ):
        routed = _run(
            amtool, "config", "routes", "test", f"--config.file={AM_CONFIG}",
            f"--verify.receivers={receiver}", *labels,
        )
        assert routed.returncode == 0, routed.stdout + routed.stderr


def test_alertmanager_config_commits_no_secret() -> None:
    data = _load_yaml(AM_CONFIG)
    receivers = {r["name"]: r for r in data["receivers"]}
    (pd,) = receivers["pager"]["pagerduty_configs"]
    (slack,) = receivers["chat"]["slack_configs"]
    assert "routing_key" not in pd and "service_key" not in pd
    assert pd["routing_key_file"].startswith("/etc/alertmanager/secrets/")
    assert "api_url" not in slack and slack["api_url_file"].startswith("/etc/alertmanager/")
    assert data["route"]["group_by"] == ["alertname", "model"]


# --- real Prometheus ---------------------------------------------------------------


def test_prometheus_relabels_scheduler_job_and_fires_rules(
    tmp_path: Path, process_logs: Callable[[list[str], str], subprocess.Popen[str]]
) -> None:
    """Real Prometheus, real exporter: the shipped scrape config and rules end to end."""
    prometheus = _binary("prometheus")
    registry = CollectorRegistry()
    errors = Counter("dqm_scheduler_job_errors", "errors", ["job"], registry=registry)
    errors.labels(job="pipeline_cycle")
    zscore = Gauge("dqm_drift_zscore", "z", ["model", "layer", "metric"], registry=registry)
    zscore.labels(model="fct_claims", layer="fct", metric="row_count").set(7.5)
    zscore.labels(model="fct_plans", layer="fct", metric="row_count").set(0.4)
    exporter_port = free_port()
    server, _thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)

    config = _load_yaml(PROM_CONFIG)
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    del config["alerting"]  # no Alertmanager here; routing is tested below
    config["scrape_configs"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{exporter_port}"]}
    ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process_logs(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        "prometheus",
    )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(q: str) -> list[dict[str, Any]]:
        url = f"{api}/query?" + urllib.parse.urlencode({"query": q})
        result: list[dict[str, Any]] = get_json(url)["data"]["result"]
        return result

    try:
        series = wait_for(lambda: query("dqm_scheduler_job_errors_total"), 30, "first scrape")
        labels = series[0]["metric"]
        assert labels["job"] == "dqm" and labels["scheduler_job"] == "pipeline_cycle"
        assert "exported_job" not in labels
        errors.labels(job="pipeline_cycle").inc()

        def firing(alert: str) -> list[dict[str, Any]]:
            return query(f'ALERTS{{alertname="{alert}", alertstate="firing"}}')

        (drift,) = wait_for(lambda: firing("DqmDriftCritical"), 20, "DqmDriftCritical")
        assert drift["metric"]["model"] == "fct_claims"
        assert drift["metric"]["severity"] == "critical"
        (job_err,) = wait_for(lambda: firing("DqmSchedulerJobErrors"), 20, "job errors alert")
        assert job_err["metric"]["scheduler_job"] == "pipeline_cycle"
        assert query('ALERTS{alertname="DqmDriftWarning"}') == []
        assert query('ALERTS{alertname="DqmDaemonDown"}') == []
    finally:
        server.shutdown()


# --- real Alertmanager --------------------------------------------------------------


class _Webhooks:
    """A 127.0.0.1 webhook receiver that records alert names per receiver path, every
    delivery (a list: a duplicate notification shows)."""

    def __init__(self) -> None:
        self.received: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hooks.lock:
                    names = hooks.received.setdefault(self.path.strip("/"), [])
                    for alert in body["alerts"]:
                        labels = alert["labels"]
                        names.append(f"{labels['alertname']}:{labels.get('model', '')}")
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self) -> dict[str, list[str]]:
        with self.lock:
            return {k: sorted(v) for k, v in self.received.items()}


def test_alertmanager_routes_by_severity_and_inhibits_per_model(
    tmp_path: Path, process_logs: Callable[[list[str], str], subprocess.Popen[str]]
) -> None:
    """Shipped route and inhibit rules in a real Alertmanager; receivers swapped for
    local webhooks, group timers shortened."""
    alertmanager = _binary("alertmanager", "prometheus-alertmanager")
    hooks = _Webhooks()
    config = _load_yaml(AM_CONFIG)
    config["route"].update(group_wait="1s", group_interval="1s")
    config["receivers"] = [
        {"name": r["name"],
         "webhook_configs": [{"url": f"http://127.0.0.1:{hooks.port}/{r['name']}"}]}
        for r in config["receivers"]
    ]
    (tmp_path / "am.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process_logs(
        [alertmanager, f"--config.file={tmp_path / 'am.yml'}",
         f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{port}",
         "--cluster.listen-address="],
        "alertmanager",
    )
    base = {"job": "dqm", "instance": "localhost:9108"}
    alerts = [
        {"alertname": "DqmDriftCritical", "severity": "critical", "model": "fct_claims"},
        {"alertname": "DqmModelSlow", "severity": "warning", "model": "fct_claims"},
        {"alertname": "DqmModelSlow", "severity": "warning", "model": "fct_plans"},
        {"alertname": "DqmPaused", "severity": "critical"},
        {"alertname": "DqmPipelineStale", "severity": "critical"},
        {"alertname": "DqmValidationFailures", "severity": "warning", "suite": "fct_claims"},
    ]
    body = json.dumps([{"labels": {**base, **a}} for a in alerts]).encode()
    url = f"http://127.0.0.1:{port}/api/v2/alerts"

    def post() -> bool:
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200

    wait_for(post, 20, "Alertmanager API")
    expected = {
        "pager": ["DqmDriftCritical:fct_claims", "DqmPaused:"],
        # fct_claims' warning is silenced by its critical drift; fct_plans' is not. A
        # daemon-wide critical (DqmPaused) silences no model-less warning.
        "chat": ["DqmModelSlow:fct_plans", "DqmValidationFailures:"],
    }
    wait_for(lambda: hooks.snapshot() == expected, 20, f"notifications {expected}")
    time.sleep(2)  # a few more group intervals: nothing else may arrive
    assert hooks.snapshot() == expected
    state = get_json(url)
    inhibited = {
        a["labels"]["alertname"] + ":" + a["labels"].get("model", "")
        for a in state if a["status"]["inhibitedBy"]
    }
    assert inhibited == {"DqmModelSlow:fct_claims", "DqmPipelineStale:"}
    hooks.server.shutdown()


# --- Grafana dashboard --------------------------------------------------------------


def test_dashboard_structure_and_datasource() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["schemaVersion"] >= 36
    assert data["uid"] == "dqm-overview"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    ds_var = variables["DS_PROMETHEUS"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    provisioned = _load_yaml(ALERTS / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert ds_var["current"]["value"] == provisioned["datasources"][0]["uid"] == "prometheus"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], p["title"]


def test_dashboard_queries_use_only_contract_metric_names() -> None:
    allowed = contract_metric_names() | PROMETHEUS_BUILTINS
    used_overall: set[str] = set()
    for p in dashboard_panels():
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no target"
        for t in p["targets"]:
            used = promql_metric_names(t["expr"])
            assert used, f"panel {p['title']!r}: no metric in {t['expr']!r}"
            assert used <= allowed, f"panel {p['title']!r}: unknown metrics {used - allowed}"
            used_overall |= used
    for v in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if v["type"] == "query":
            (metric,) = re.findall(r"label_values\((\w+)", v["definition"])
            assert metric in allowed, v["name"]
    # The panels the dashboard promises, each backed by its metric.
    for metric in (
        "dqm_model_duration_seconds", "dqm_run_duration_seconds", "dqm_model_cost",
        "dqm_run_cost", "dqm_model_rows", "dqm_drift_zscore", "dqm_validation_failures",
        "dqm_held_batches", "dqm_quarantined_rows", "dqm_last_success_timestamp_seconds",
        "dqm_paused",
    ):
        assert metric in used_overall, metric


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    data = _load_yaml(ALERTS / "grafana" / "provisioning" / "dashboards" / "dqm.yml")
    (provider,) = data["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/dqm"
    # compose mounts alerts/grafana/dashboards exactly there.
    compose = _load_yaml(REPO / "deploy" / "container" / "compose.yaml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert "../../alerts/grafana/dashboards:/var/lib/grafana/dashboards/dqm:ro" in mounts
