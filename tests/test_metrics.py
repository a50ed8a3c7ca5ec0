"""monitor.export.prometheus: real HTTP scrapes of /metrics, parsed by prometheus_client."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import __version__
from monitor.export.prometheus import Metrics, MetricsServer
from monitor.observe.run import ModelObservation

CONTRACT = {  # docs/contracts.md: name -> (type, labels)
    "dqm_build_info": ("gauge", {"version"}),
    "dqm_run_duration_seconds": ("gauge", set()),
    "dqm_model_duration_seconds": ("gauge", {"model", "layer"}),
    "dqm_model_rows": ("gauge", {"model", "layer"}),
    "dqm_model_cost": ("gauge", {"model", "layer"}),
    "dqm_run_cost": ("gauge", set()),
    "dqm_drift_zscore": ("gauge", {"model", "layer", "metric"}),
    "dqm_validation_failures": ("gauge", {"suite"}),
    "dqm_held_batches": ("gauge", {"feed"}),
    "dqm_quarantined_rows": ("gauge", {"feed"}),
    "dqm_feed_last_batch_timestamp_seconds": ("gauge", {"feed"}),
    "dqm_last_success_timestamp_seconds": ("gauge", set()),
    "dqm_paused": ("gauge", set()),
    "dqm_runs_total": ("counter", {"status"}),
    "dqm_alerts_sent_total": ("counter", {"sink", "severity"}),
    "dqm_scheduler_job_errors_total": ("counter", {"scheduler_job"}),
    "dqm_scheduler_missed_runs_total": ("counter", {"scheduler_job"}),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def parse(text: str) -> tuple[dict[str, tuple[str, str]], Samples]:
    """(family name -> (type, help), (sample name, labels) -> value)."""
    families: dict[str, tuple[str, str]] = {}
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = (fam.type, fam.documentation)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics(currency="EUR")
    server = metrics.serve(
        port=0,
        extra_routes={
            "/healthz": lambda: (200, "ok\n"),
            "/readyz": lambda: (503, {"ready": False, "reason": "no cycle yet"}),
            "/boom": lambda: 1 / 0,  # type: ignore[dict-item,return-value]
        },
    )
    yield metrics, server
    server.shutdown()


def fill(m: Metrics) -> None:
    m.observe_run(
        "success",
        42.5,
        1.25,
        [
            ModelObservation("fct_claims", "fct", duration_s=3.5, rows=1200, cost=0.75),
            ModelObservation("stg_benefits__claims", "stg", duration_s=0.5, rows=1300, cost=0.5),
        ],
    )
    m.replace_drift([("fct_claims", "fct", "row_count", 3.25),
                     ("fct_claims", "fct", "null_rate", -1.5)])
    m.replace_validation_failures({"fct_claims": 2, "fct_plans": 0})
    m.set_feed("claims", held=1, quarantined_rows=7, last_batch_ts=1_767_225_600.0)
    m.set_paused(True)
    m.set_last_success(1_767_229_200.0)
    m.alert_sent("pager", "critical")
    m.alert_sent("pager", "critical")
    m.job_error("cycle")
    m.job_missed("freshness")


def test_scrape_exposes_contract_metrics_with_values(
    served: tuple[Metrics, MetricsServer],
) -> None:
    metrics, server = served
    assert server.port > 0 and server.host == "127.0.0.1"
    fill(metrics)
    status, ctype, text = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    families, samples = parse(text)

    for name, (mtype, labels) in CONTRACT.items():
        family = name.removesuffix("_total") if mtype == "counter" else name
        assert families[family][0] == mtype, name
        assert families[family][1], f"{name} has no HELP"
        label_sets = [{k for k, _ in lbl} for sname, lbl in samples if sname == name]
        assert label_sets and all(ls == labels for ls in label_sets), name
    counters = {n.removesuffix("_total") for n, (t, _) in CONTRACT.items() if t == "counter"}
    # prometheus_client also exports each counter's creation time as <name>_created.
    allowed = {n.removesuffix("_total") for n in CONTRACT} | {c + "_created" for c in counters}
    assert {n for n in families if n.startswith("dqm_")} == allowed
    assert "EUR" in families["dqm_model_cost"][1] and "EUR" in families["dqm_run_cost"][1]
    assert "seconds" in families["dqm_run_duration_seconds"][1]

    expected = {
        key("dqm_build_info", version=__version__): 1.0,
        key("dqm_run_duration_seconds"): 42.5,
        key("dqm_run_cost"): 1.25,
        key("dqm_model_duration_seconds", model="fct_claims", layer="fct"): 3.5,
        key("dqm_model_rows", model="fct_claims", layer="fct"): 1200.0,
        key("dqm_model_cost", model="stg_benefits__claims", layer="stg"): 0.5,
        key("dqm_drift_zscore", model="fct_claims", layer="fct", metric="row_count"): 3.25,
        key("dqm_drift_zscore", model="fct_claims", layer="fct", metric="null_rate"): -1.5,
        key("dqm_validation_failures", suite="fct_claims"): 2.0,
        key("dqm_validation_failures", suite="fct_plans"): 0.0,
        key("dqm_held_batches", feed="claims"): 1.0,
        key("dqm_quarantined_rows", feed="claims"): 7.0,
        key("dqm_feed_last_batch_timestamp_seconds", feed="claims"): 1_767_225_600.0,
        key("dqm_last_success_timestamp_seconds"): 1_767_229_200.0,
        key("dqm_paused"): 1.0,
        key("dqm_runs_total", status="success"): 1.0,
        key("dqm_runs_total", status="failed"): 0.0,  # pre-created at 0
        key("dqm_alerts_sent_total", sink="pager", severity="critical"): 2.0,
        key("dqm_scheduler_job_errors_total", scheduler_job="cycle"): 1.0,
        key("dqm_scheduler_missed_runs_total", scheduler_job="freshness"): 1.0,
    }
    for k, v in expected.items():
        assert samples.get(k) == v, k


def test_stale_label_sets_are_removed(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    fill(metrics)
    # fct_claims moved to layer "mart"; the stg model disappeared.
    metrics.observe_run("failed", 5.0, None, [ModelObservation("fct_claims", "mart", 1.0, 10)])
    metrics.replace_drift([("fct_claims", "fct", "row_count", None)])  # no history: no series
    metrics.replace_validation_failures({"fct_plans": 1})
    metrics.retain_feeds([])
    metrics.set_paused(False)
    _, samples = parse(get(f"{server.url}/metrics")[2])

    models = {
        dict(lbl)["model"] + "/" + dict(lbl)["layer"]
        for (name, lbl) in samples
        if name == "dqm_model_duration_seconds"
    }
    assert models == {"fct_claims/mart"}
    assert not any(n == "dqm_model_cost" for n, _ in samples)  # cost None: no series
    assert samples[key("dqm_model_rows", model="fct_claims", layer="mart")] == 10.0
    assert not any(n == "dqm_drift_zscore" for n, _ in samples)
    assert {dict(lbl)["suite"] for n, lbl in samples if n == "dqm_validation_failures"} == {
        "fct_plans"
    }
    assert not any(n.startswith(("dqm_held", "dqm_quarantined", "dqm_feed_")) for n, _ in samples)
    assert samples[key("dqm_run_cost")] == 1.25  # None keeps the last known value
    assert samples[key("dqm_run_duration_seconds")] == 5.0
    assert samples[key("dqm_runs_total", status="failed")] == 1.0
    assert samples[key("dqm_paused")] == 0.0


def test_partial_run_keeps_other_models() -> None:
    m = Metrics()
    m.observe_run(
        "success", 1.0, 1.0, [ModelObservation("a", "stg", 1.0), ModelObservation("b", "fct", 2.0)]
    )
    m.observe_run("failed", 1.0, 1.0, [ModelObservation("a", "stg", 3.0)], prune=False)
    _, samples = parse(m.render()[0].decode())
    assert samples[key("dqm_model_duration_seconds", model="a", layer="stg")] == 3.0
    assert samples[key("dqm_model_duration_seconds", model="b", layer="fct")] == 2.0
    with pytest.raises(ValueError, match="unknown run status"):
        m.observe_run("weird", 1.0, 1.0)


def test_extra_routes_and_errors(served: tuple[Metrics, MetricsServer]) -> None:
    _, server = served
    assert get(f"{server.url}/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    status, ctype, body = get(f"{server.url}/readyz")
    assert (status, ctype) == (503, "application/json")
    assert body == '{"ready": false, "reason": "no cycle yet"}'
    assert get(f"{server.url}/nope")[0] == 404
    assert get(f"{server.url}/boom")[0] == 500  # a raising probe answers 500 ...
    assert get(f"{server.url}/healthz")[0] == 200  # ... and the server keeps serving


def test_two_registries_do_not_collide_and_shutdown_frees_port() -> None:
    a, b = Metrics(), Metrics()
    a.set_paused(True)
    assert parse(b.render()[0].decode())[1][key("dqm_paused")] == 0.0
    server = a.serve(port=0)
    port = server.port
    server.shutdown()
    server.shutdown()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    with pytest.raises(ValueError, match="/metrics"):
        a.serve(port=0, extra_routes={"/metrics": lambda: (200, "x")})


def test_openmetrics_negotiation(served: tuple[Metrics, MetricsServer]) -> None:
    _, server = served
    req = urllib.request.Request(
        f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().decode().rstrip().endswith("# EOF")


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH (Debian package 'prometheus'; CI installs it)",
)
def test_promtool_lint_is_clean(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    fill(metrics)
    text = get(f"{server.url}/metrics")[2]
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, text=True, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == ""
