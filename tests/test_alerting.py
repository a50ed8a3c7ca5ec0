"""monitor.alerting: rules, reconcile, the durable outbox, and sinks against real HTTP
receivers on 127.0.0.1 (stdlib servers in threads) with a real SQLite state store."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from monitor.alerting.incidents import (
    evaluate_and_reconcile,
    group_incidents,
    open_alerts,
    reconcile,
)
from monitor.alerting.outbox import deliver, outbox_counts, pages_since
from monitor.alerting.rules import (
    Alert,
    DriftSignal,
    Observations,
    evaluate,
    skipped_rules,
)
from monitor.alerting.sinks.registry import build_sink, build_sinks
from monitor.core.sections import AlertingConfig, AlertRule, SinkConfig
from monitor.observe.run import ModelObservation
from monitor.store.state import alert_outbox, open_state

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
EVIDENCE = "https://reports.example/runs/r1/triage.html"


class Receiver:
    """A local HTTP endpoint that records every POST and answers ``status``."""

    def __init__(self, port: int = 0, status: int = 200, delay_s: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = status
        self.delay_s = delay_s
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(outer.delay_s)
                with outer._lock:
                    outer.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                    )
                self.send_response(outer.status)
                if 300 <= outer.status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def bodies(self) -> list[Any]:
        with self._lock:
            return [r["json"] for r in self.requests]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def engine(state_url: str) -> Iterator[sa.Engine]:
    e = open_state(state_url)
    yield e
    e.dispose()


def dead_port() -> int:
    """A port where nothing listens (connection refused), free to re-bind later."""
    r = Receiver()
    r.stop()
    return r.port


def obs(**kw: Any) -> Observations:
    base: dict[str, Any] = {
        "run_id": "r1",
        "run_status": "success",
        "now": T0,
        "evidence_path": EVIDENCE,
    }
    return Observations(**{**base, **kw})


def keys(alerts: list[Alert]) -> list[str]:
    return [a.dedup_key for a in alerts]


def outbox_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(sa.select(alert_outbox).order_by(alert_outbox.c.id)).mappings()
        ]


SLOW = Alert(
    "slow:fct_claims",
    "slow",
    "runtime",
    "critical",
    "fct_claims took 75 s",
    "Model fct_claims took 75 s (rule slow, run r1).",
    {"kind": "runtime", "model": "fct_claims", "layer": "fct"},
    EVIDENCE,
    "r1",
)
STALE = Alert(
    "stale:claims",
    "stale",
    "freshness",
    "warning",
    "No new batch for claims",
    "No new batch for claims.",
    {"kind": "freshness", "feed": "claims"},
    EVIDENCE,
    "r1",
)

# -- evaluate -----------------------------------------------------------------------


def test_evaluate_runtime_model_and_run_scope() -> None:
    rules = [
        AlertRule("slow_fct", "runtime", "warning", threshold=60, selector="fct_*"),
        AlertRule("slow_run", "runtime", "critical", threshold=600, scope="run"),
        AlertRule("slow_layer", "runtime", threshold=1, layer="stg"),
    ]
    models = [
        ModelObservation("fct_claims", "fct", 75.0),
        ModelObservation("fct_plans", "fct", 60.0),
        ModelObservation("stg_claims", "stg", 100.0),
        ModelObservation("fct_x", "fct", None),
    ]
    alerts = evaluate(rules, obs(models=models, run_duration_s=601.0))
    assert keys(alerts) == ["slow_fct:fct_claims", "slow_run:run", "slow_layer:stg_claims"]
    a = alerts[0]
    assert (a.rule, a.kind, a.severity, a.status) == ("slow_fct", "runtime", "warning", "firing")
    assert a.summary == "fct_claims took 75 s (threshold 60 s)"
    assert a.description == "Model fct_claims (layer fct) took 75 s (rule slow_fct, run r1)."
    assert a.labels == {"kind": "runtime", "model": "fct_claims", "layer": "fct"}
    assert (a.evidence, a.run_id) == (EVIDENCE, "r1")
    assert alerts[1].summary == "Run took 601 s (threshold 600 s)"
    assert alerts[1].severity == "critical" and alerts[1].labels == {"kind": "runtime"}
    # Exactly at the threshold does not fire.
    assert evaluate(rules[1:2], obs(run_duration_s=600.0)) == []


def test_evaluate_cost_accepts_metrics_model_observations() -> None:
    rules = [
        AlertRule("costly", "cost", threshold=0.5),
        AlertRule("costly_run", "cost", threshold=2, scope="run"),
    ]
    models = [
        ModelObservation("fct_claims", "fct", 1.0, 10, cost=0.75),
        ModelObservation("fct_plans", "fct", 1.0, 10, cost=0.5),
        ModelObservation("fct_y", "fct", 1.0, 10, cost=None),
    ]
    alerts = evaluate(rules, obs(models=models, run_cost=2.5))
    assert keys(alerts) == ["costly:fct_claims", "costly_run:run"]
    assert alerts[0].summary == "fct_claims cost 0.75 (threshold 0.5)"
    assert alerts[1].summary == "Run cost 2.5 (threshold 2)"


def test_evaluate_drift_threshold_and_detector_flag() -> None:
    rules = [
        AlertRule("z3", "drift", threshold=3, selector="row_*"),
        AlertRule("flagged", "drift", "info", model="fct_*"),
    ]
    drift = [
        DriftSignal("fct_claims", "row_count", 3.0, False),
        DriftSignal("fct_plans", "row_count", -3.5, True),
        DriftSignal("fct_emp", "row_count", 2.99, False),
        DriftSignal("fct_emp", "row_total", None, True),
        DriftSignal("stg_x", "row_count", float("nan"), True),
        DriftSignal("fct_claims", "null_rate:amount", 10.0, False),
    ]
    alerts = evaluate(rules, obs(drift=drift))
    assert keys(alerts) == [
        "z3:fct_claims:row_count",
        "z3:fct_plans:row_count",
        "flagged:fct_plans:row_count",
        "flagged:fct_emp:row_total",
    ]
    assert alerts[0].summary == "fct_claims.row_count drifted (z=+3.00)"
    assert alerts[0].labels == {"kind": "drift", "model": "fct_claims", "metric": "row_count"}
    assert alerts[3].summary == "fct_emp.row_total drifted (z=n/a)"
    assert alerts[2].severity == "info"


def test_evaluate_validation_and_freshness() -> None:
    rules = [
        AlertRule("gx", "validation", "critical", selector="fct_*"),
        AlertRule("gx_tolerant", "validation", threshold=3, selector="stg_*"),
        AlertRule("stale", "freshness", threshold=26),
    ]
    validation = {"fct_claims": 2, "fct_plans": 0, "stg_a": 3, "stg_b": 4}
    feeds: dict[str, datetime | float | None] = {
        "claims": T0 - timedelta(hours=27),
        "plans": T0 - timedelta(hours=25),
        "employees": None,
        "companies": (T0 - timedelta(hours=30)).timestamp(),
    }
    alerts = evaluate(rules, obs(validation=validation, feed_last_batch=feeds))
    assert keys(alerts) == [
        "gx:fct_claims",
        "gx_tolerant:stg_b",
        "stale:claims",
        "stale:employees",
        "stale:companies",
    ]
    assert alerts[0].summary == "2 failed expectation(s) in suite fct_claims"
    assert alerts[0].labels == {"kind": "validation", "suite": "fct_claims"}
    assert alerts[2].summary == "No new batch for feed claims in 27.0 h (threshold 26 h)"
    assert alerts[3].summary == "No batch ever received for feed employees"
    assert alerts[4].summary == "No new batch for feed companies in 30.0 h (threshold 26 h)"


def test_evaluate_run_failed_and_skipped_rules() -> None:
    rules = [
        AlertRule("failed", "run_failed", "critical"),
        AlertRule("not_ok", "run_failed", selector="[fh]*"),
        AlertRule("drift", "drift", threshold=3),
        AlertRule("slow", "runtime", threshold=1),
        AlertRule("slow_run", "runtime", threshold=1, scope="run"),
        AlertRule("fresh", "freshness", threshold=1),
        AlertRule("gx", "validation"),
    ]
    alerts = evaluate(rules, obs(run_status="failed"))
    assert keys(alerts) == ["failed:run", "not_ok:run"]
    assert alerts[0].summary == "Run r1 ended failed"
    assert keys(evaluate(rules, obs(run_status="held"))) == ["not_ok:run"]
    assert evaluate(rules, obs()) == []
    assert skipped_rules(rules, obs()) == {"drift", "slow", "slow_run", "fresh", "gx"}
    observed = obs(
        models=[],
        drift=[],
        validation={},
        feed_last_batch={},
        run_duration_s=1.0,
        run_status="interrupted",
    )
    assert skipped_rules(rules, observed) == {"failed", "not_ok"}


def test_config_validation_and_loading_from_mappings() -> None:
    cfg = AlertingConfig(
        rules=[{"name": "slow", "kind": "runtime", "threshold": 5}],  # type: ignore[arg-type]
        sinks=[
            {
                "name": "pd",
                "kind": "pagerduty",
                "routing_key_env": "PD_KEY",  # type: ignore[arg-type]
                "severities": ["critical"],
            }
        ],
        backoff_base_s=10,
        backoff_max_s=100,
    )
    assert cfg.rules[0] == AlertRule("slow", "runtime", threshold=5)
    assert cfg.sinks[0].severities == ("critical",)
    assert [cfg.backoff(n).total_seconds() for n in (1, 2, 3, 4, 5, 99)] == [
        10,
        20,
        40,
        80,
        100,
        100,
    ]
    bad: list[tuple[Any, str]] = [
        (lambda: AlertRule("x", "nope"), "kind"),
        (lambda: AlertRule("x", "drift", "urgent"), "severity"),
        (lambda: AlertRule("x", "runtime"), "needs a threshold"),
        (lambda: AlertRule("x y", "run_failed"), "rule name"),
        (lambda: SinkConfig("s", "slack", url="https://hooks.slack.com/x"), "url_env"),
        (lambda: SinkConfig("s", "pagerduty"), "routing_key_env"),
        (lambda: SinkConfig("s", "webhook"), "url"),
        (lambda: SinkConfig("s", "webhook", url="ftp://x"), "http"),
        (lambda: SinkConfig("s", "log", severities=("page",)), "severities"),
        (lambda: SinkConfig("s", "pagerduty", routing_key_env="not-an-env"), "environment"),
        (lambda: AlertingConfig(sinks=(SinkConfig("a"), SinkConfig("a"))), "duplicate"),
    ]
    for make, msg in bad:
        with pytest.raises(ValueError, match=msg):
            make()


def test_secrets_come_from_named_env_vars_only() -> None:
    cfg = SinkConfig("pd", "pagerduty", routing_key_env="PD_KEY")
    with pytest.raises(ValueError, match="PD_KEY is not set"):
        build_sink(cfg, environ={})
    sink = build_sink(cfg, environ={"PD_KEY": "r0ut1ng-s3cret"})
    assert "r0ut1ng-s3cret" not in repr(sink)
    slack = build_sinks(
        [SinkConfig("chat", "slack", url_env="SLACK_URL")],
        environ={"SLACK_URL": "https://hooks.slack.com/services/T/B/s3cret"},
    )
    assert "s3cret" not in repr(slack)
    with pytest.raises(ValueError, match="http"):
        build_sink(SinkConfig("chat", "slack", url_env="SLACK_URL"), {"SLACK_URL": "nope"})


# -- sinks: payload shapes over real HTTP --------------------------------------------


def fire_then_resolve(engine: sa.Engine, cfg: SinkConfig, env: dict[str, str]) -> None:
    sinks = build_sinks([cfg], env)
    reconcile(engine, [SLOW], T0, sinks=[cfg])
    assert [d.status for d in deliver(engine, sinks, T0)] == ["sent"]
    t1 = T0 + timedelta(minutes=10)
    reconcile(engine, [], t1, sinks=[cfg], evidence=EVIDENCE + "?after")
    assert [d.status for d in deliver(engine, sinks, t1)] == ["sent"]


def test_alertmanager_payload(engine: sa.Engine, receiver: Receiver) -> None:
    cfg = SinkConfig(
        "am", "alertmanager", url=receiver.url + "/", token_env="AM_TOKEN", firing_ttl_s=3600
    )
    fire_then_resolve(engine, cfg, {"AM_TOKEN": "tok"})
    fired, resolved = receiver.requests
    assert fired["path"] == resolved["path"] == "/api/v2/alerts"
    assert fired["headers"]["Authorization"] == "Bearer tok"
    labels = {
        "alertname": "slow",
        "severity": "critical",
        "dedup_key": "slow:fct_claims",
        "kind": "runtime",
        "model": "fct_claims",
        "layer": "fct",
        "incident": "slow:fct_claims",  # a critical alert opens its own incident
    }
    assert fired["json"] == [
        {
            "labels": labels,
            "annotations": {
                "summary": SLOW.summary,
                "description": SLOW.description,
                "evidence": EVIDENCE,
            },
            "startsAt": "2026-03-02T12:00:00Z",
            "endsAt": "2026-03-02T13:00:00Z",  # send time + firing_ttl_s
            "generatorURL": EVIDENCE,
        }
    ]
    (res,) = resolved["json"]
    assert res["labels"] == labels  # same label set: Alertmanager resolves the same alert
    assert res["startsAt"] == "2026-03-02T12:00:00Z"
    assert res["endsAt"] == "2026-03-02T12:10:00Z"
    assert res["annotations"]["evidence"] == EVIDENCE + "?after"


def test_pagerduty_payload(engine: sa.Engine, receiver: Receiver) -> None:
    cfg = SinkConfig(
        "pd",
        "pagerduty",
        url=receiver.url + "/v2/enqueue",
        routing_key_env="PD_KEY",
        source="dqm-test",
    )
    fire_then_resolve(engine, cfg, {"PD_KEY": "rk"})
    trigger, resolve = receiver.requests
    assert trigger["path"] == "/v2/enqueue"
    assert trigger["json"] == {
        "routing_key": "rk",
        "event_action": "trigger",
        "dedup_key": "slow:fct_claims",
        "payload": {
            "summary": SLOW.summary,
            "source": "dqm-test",
            "severity": "critical",
            "timestamp": "2026-03-02T12:00:00Z",
            "component": "fct_claims",
            "group": "fct",
            "class": "runtime",
            "custom_details": {
                "description": SLOW.description,
                "labels": {**SLOW.labels, "incident": "slow:fct_claims"},
                "evidence": EVIDENCE,
                "run_id": "r1",
                "rule": "slow",
            },
        },
        "links": [{"href": EVIDENCE, "text": "Evidence"}],
    }
    assert resolve["json"] == {
        "routing_key": "rk",
        "event_action": "resolve",
        "dedup_key": "slow:fct_claims",
    }


def test_slack_payload(engine: sa.Engine, receiver: Receiver) -> None:
    cfg = SinkConfig("chat", "slack", url_env="SLACK_URL")
    fire_then_resolve(engine, cfg, {"SLACK_URL": receiver.url + "/services/T/B/x"})
    fired, resolved = receiver.bodies()
    assert fired == {
        "text": f":red_circle: [FIRING:critical] {SLOW.summary}\n"
        f"{SLOW.description}\nEvidence: {EVIDENCE}"
    }
    assert resolved["text"].startswith(f":white_check_mark: [RESOLVED] {SLOW.summary}\n")
    assert receiver.requests[0]["path"] == "/services/T/B/x"


def test_webhook_payload(engine: sa.Engine, receiver: Receiver) -> None:
    cfg = SinkConfig("hook", "webhook", url_env="HOOK_URL")
    fire_then_resolve(engine, cfg, {"HOOK_URL": receiver.url + "/hook"})
    fired, resolved = receiver.bodies()
    assert fired == {
        "version": 1,
        "dedup_key": "slow:fct_claims",
        "rule": "slow",
        "kind": "runtime",
        "status": "firing",
        "severity": "critical",
        "summary": SLOW.summary,
        "description": SLOW.description,
        "labels": {**SLOW.labels, "incident": "slow:fct_claims"},
        "evidence": EVIDENCE,
        "run_id": "r1",
        "starts_at": "2026-03-02T12:00:00Z",
        "ends_at": None,
        "incident": "slow:fct_claims",
        "role": "lead",
        "related": [],
    }
    assert (resolved["status"], resolved["ends_at"]) == ("resolved", "2026-03-02T12:10:00Z")
    assert "Authorization" not in receiver.requests[0]["headers"]


def test_log_sink(engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    cfg = SinkConfig("log", "log")
    with caplog.at_level(logging.INFO, logger="monitor.alerts"):
        fire_then_resolve(engine, cfg, {})
    recs = [r for r in caplog.records if r.name == "monitor.alerts"]
    assert [r.levelno for r in recs] == [logging.ERROR, logging.INFO]
    assert recs[0].getMessage().startswith(f"[FIRING:critical] {SLOW.summary} (slow:fct_claims)")
    assert recs[1].getMessage().startswith("[RESOLVED:critical]")


# -- reconcile ----------------------------------------------------------------------


def test_reconcile_fires_once_and_resolves_with_severity_routing(engine: sa.Engine) -> None:
    pager, chat = Receiver(), Receiver()
    try:
        cfg = AlertingConfig(
            rules=(
                AlertRule("slow", "runtime", "critical", threshold=60),
                AlertRule("stale", "freshness", "warning", threshold=24),
            ),
            sinks=(
                SinkConfig(
                    "pager", "pagerduty", ("critical",), url=pager.url, routing_key_env="PD_KEY"
                ),
                SinkConfig("chat", "webhook", ("critical", "warning"), url=chat.url),
            ),
        )
        sinks = build_sinks(cfg.sinks, {"PD_KEY": "rk"})
        slow = [ModelObservation("fct_claims", "fct", 75.0)]
        fast = [ModelObservation("fct_claims", "fct", 5.0)]
        stale = {"claims": T0 - timedelta(hours=30)}
        fresh = {"claims": T0}

        def cycle(hours: int, models: list[ModelObservation],
                  feeds: dict[str, Any]) -> tuple[Any, ...]:
            now = T0 + timedelta(hours=hours)
            res = evaluate_and_reconcile(
                engine, cfg, obs(now=now, models=models, feed_last_batch=feeds)
            )
            sent = deliver(engine, sinks, now, config=cfg)
            assert all(d.status == "sent" for d in sent)
            return res.fired, res.still_firing, res.resolved, len(sent)

        assert cycle(0, slow, stale) == (("slow:fct_claims", "stale:claims"), (), (), 3)
        assert cycle(1, slow, stale) == ((), ("slow:fct_claims", "stale:claims"), (), 0)
        assert cycle(2, fast, stale) == ((), ("stale:claims",), ("slow:fct_claims",), 2)
        assert cycle(3, fast, {"claims": T0 + timedelta(hours=3)}) == ((), (), ("stale:claims",), 1)
        assert cycle(4, fast, fresh) == ((), (), (), 0)
        assert cycle(5, slow, fresh) == (("slow:fct_claims",), (), (), 2)  # a new transition

        actions = [(b["event_action"], b["dedup_key"]) for b in pager.bodies()]
        assert actions == [
            ("trigger", "slow:fct_claims"),
            ("resolve", "slow:fct_claims"),
            ("trigger", "slow:fct_claims"),
        ]
        chat_events = [(b["status"], b["dedup_key"]) for b in chat.bodies()]
        assert chat_events == [
            ("firing", "slow:fct_claims"),
            ("firing", "stale:claims"),
            ("resolved", "slow:fct_claims"),
            ("resolved", "stale:claims"),
            ("firing", "slow:fct_claims"),
        ]
        assert [a["dedup_key"] for a in open_alerts(engine)] == ["slow:fct_claims"]
        assert open_alerts(engine)[0]["started_at"] == datetime(2026, 3, 2, 17, 0)
    finally:
        pager.stop()
        chat.stop()


def test_unobserved_rules_keep_their_alerts_open(engine: sa.Engine) -> None:
    cfg = AlertingConfig(
        rules=(AlertRule("z", "drift", threshold=3),), sinks=(SinkConfig("log", "log"),)
    )
    res = evaluate_and_reconcile(engine, cfg, obs(drift=[DriftSignal("m", "rows", 4.0)]))
    assert res.fired == ("z:m:rows",)
    res = evaluate_and_reconcile(engine, cfg, obs(drift=None))  # drift step did not run
    assert (res.resolved, res.enqueued) == ((), 0)
    assert [a["dedup_key"] for a in open_alerts(engine)] == ["z:m:rows"]
    res = evaluate_and_reconcile(engine, cfg, obs(drift=[DriftSignal("m", "rows", 0.5)]))
    assert res.resolved == ("z:m:rows",) and open_alerts(engine) == []


def test_alertmanager_refreshed_before_ends_at_but_pager_never(
    engine: sa.Engine,
    receiver: Receiver,
) -> None:
    cfg = [
        SinkConfig("am", "alertmanager", url=receiver.url, firing_ttl_s=3600),
        SinkConfig("pd", "pagerduty", url=receiver.url + "/pd", routing_key_env="K"),
    ]
    sinks = build_sinks(cfg, {"K": "rk"})
    for minutes, expect_enqueued in ((0, 2), (20, 0), (29, 0), (30, 1), (50, 0), (60, 1)):
        now = T0 + timedelta(minutes=minutes)
        assert reconcile(engine, [SLOW], now, sinks=cfg).enqueued == expect_enqueued, minutes
        deliver(engine, sinks, now)
    am = [r["json"][0]["endsAt"] for r in receiver.requests if r["path"] == "/api/v2/alerts"]
    assert am == ["2026-03-02T13:00:00Z", "2026-03-02T13:30:00Z", "2026-03-02T14:00:00Z"]
    assert sum(r["path"] == "/pd" for r in receiver.requests) == 1


# -- outbox -------------------------------------------------------------------------


def test_outbox_backoff_while_sink_refuses_then_exactly_once(engine: sa.Engine) -> None:
    port = dead_port()
    cfg = AlertingConfig(
        sinks=(SinkConfig("hook", "webhook", url=f"http://127.0.0.1:{port}/h"),),
        backoff_base_s=60,
        backoff_max_s=600,
    )
    sinks = build_sinks(cfg.sinks, {})
    reconcile(engine, [SLOW, STALE], T0, sinks=cfg.sinks)

    tried = deliver(engine, sinks, T0, config=cfg)
    # The first row fails; the second waits for the next pass (sink known down).
    assert [(d.dedup_key, d.status) for d in tried] == [("slow:fct_claims", "pending")]
    assert tried[0].error is not None and tried[0].error.startswith("unreachable")
    assert deliver(engine, sinks, T0 + timedelta(seconds=30), config=cfg)[0].dedup_key == (
        "stale:claims"
    )
    assert deliver(engine, sinks, T0 + timedelta(seconds=59), config=cfg) == []  # not due
    assert len(deliver(engine, sinks, T0 + timedelta(seconds=61), config=cfg)) == 1
    rows = outbox_rows(engine)
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 2), ("pending", 1)]
    # Exponential: 60 s after the 1st failure, 120 s after the 2nd.
    assert rows[0]["next_attempt_at"] == datetime(2026, 3, 2, 12, 3, 1)
    assert rows[1]["next_attempt_at"] == datetime(2026, 3, 2, 12, 1, 30)
    assert rows[0]["last_error"].startswith("unreachable")

    # SLOW clears while the sink is down: its resolve must queue behind its firing.
    reconcile(engine, [STALE], T0 + timedelta(seconds=62), sinks=cfg.sinks)
    back = Receiver(port=port)
    try:
        sent = deliver(engine, sinks, T0 + timedelta(seconds=100), config=cfg)
        assert [(d.dedup_key, d.event) for d in sent] == [("stale:claims", "firing")]
        sent = deliver(engine, sinks, T0 + timedelta(seconds=200), config=cfg)
        assert [(d.dedup_key, d.event) for d in sent] == [
            ("slow:fct_claims", "firing"),
            ("slow:fct_claims", "resolved"),
        ]
        assert deliver(engine, sinks, T0 + timedelta(days=1), config=cfg) == []
        got = [(b["dedup_key"], b["status"]) for b in back.bodies()]
        assert got == [
            ("stale:claims", "firing"),
            ("slow:fct_claims", "firing"),
            ("slow:fct_claims", "resolved"),
        ]  # each exactly once, in order
        assert outbox_counts(engine) == {"sent": 3}
    finally:
        back.stop()


def test_outbox_http_500_and_redirect_retry_until_dead(
    engine: sa.Engine,
    receiver: Receiver,
) -> None:
    receiver.status = 500
    cfg = AlertingConfig(
        sinks=(SinkConfig("chat", "slack", url_env="SLACK"),),
        backoff_base_s=1,
        backoff_max_s=1,
        max_attempts=3,
    )
    sinks = build_sinks(cfg.sinks, {"SLACK": receiver.url + "/services/very-secret"})
    reconcile(engine, [SLOW], T0, sinks=cfg.sinks)
    statuses = []
    for i, code in enumerate((500, 302, 500)):
        receiver.status = code
        statuses += [
            d.status for d in deliver(engine, sinks, T0 + timedelta(seconds=5 * i), config=cfg)
        ]
    assert statuses == ["pending", "pending", "dead"]
    (row,) = outbox_rows(engine)
    assert (row["status"], row["attempts"]) == ("dead", 3)
    assert row["last_error"].startswith("HTTP 500") and "very-secret" not in row["last_error"]
    receiver.status = 200
    assert deliver(engine, sinks, T0 + timedelta(hours=1), config=cfg) == []
    assert len(receiver.requests) == 3  # every attempt reached it; a 302 is no success


def test_outbox_survives_restart(state_url: str) -> None:
    port = dead_port()
    cfg = AlertingConfig(sinks=(SinkConfig("hook", "webhook", url=f"http://127.0.0.1:{port}"),))
    first = open_state(state_url)
    reconcile(first, [SLOW, STALE], T0, sinks=cfg.sinks)
    assert [d.status for d in deliver(first, build_sinks(cfg.sinks), T0, config=cfg)] == ["pending"]
    first.dispose()  # the daemon "crashes"

    second = open_state(state_url)
    try:
        assert outbox_counts(second) == {"pending": 2}
        # Still firing after the restart: nothing new is enqueued.
        res = reconcile(second, [SLOW, STALE], T0 + timedelta(minutes=5), sinks=cfg.sinks)
        assert (res.fired, res.enqueued) == ((), 0)
        back = Receiver(port=port)
        try:
            later = T0 + timedelta(hours=1)
            assert len(deliver(second, build_sinks(cfg.sinks), later, config=cfg)) == 2
            assert deliver(second, build_sinks(cfg.sinks), later, config=cfg) == []
            assert sorted(b["dedup_key"] for b in back.bodies()) == [
                "slow:fct_claims",
                "stale:claims",
            ]
        finally:
            back.stop()
    finally:
        second.dispose()


def test_concurrent_deliveries_send_each_row_once(engine: sa.Engine) -> None:
    slow_receiver = Receiver(delay_s=0.02)
    try:
        cfg = (SinkConfig("hook", "webhook", url=slow_receiver.url),)
        alerts = [Alert(f"r:m{i}", "r", "runtime", "warning", f"m{i}", "d", {}) for i in range(20)]
        reconcile(engine, alerts, T0, sinks=cfg)
        sinks = build_sinks(cfg)
        n = 3
        start = threading.Barrier(n)  # all read the same 20 pending rows, then race
        done: list[list[str]] = [[] for _ in range(n)]

        def race(i: int) -> None:
            start.wait(timeout=10)
            done[i] = [d.dedup_key for d in deliver(engine, sinks, T0) if d.status == "sent"]

        threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        expected = sorted(a.dedup_key for a in alerts)
        got = sorted(b["dedup_key"] for b in slow_receiver.bodies())
        assert got == expected  # a list: all delivered, none twice
        # Each row was sent by exactly one of the racing passes.
        assert sorted(k for keys in done for k in keys) == expected, done
        assert outbox_counts(engine) == {"sent": 20}
    finally:
        slow_receiver.stop()


def test_rows_for_removed_sinks_go_dead(engine: sa.Engine) -> None:
    reconcile(engine, [SLOW], T0, sinks=(SinkConfig("old", "log"),))
    (d,) = deliver(engine, {}, T0)
    assert (d.status, d.error) == ("dead", "sink not configured")


# -- incidents: one cause, one page -----------------------------------------------------


def _bad_delivery(run_id: str, now: datetime, validation: dict[str, int], status: str = "failed",
                  drift: list[DriftSignal] | None = None) -> Observations:
    """What a cycle reports after a bad claims delivery: suites failed, the run failed,
    the facts drifted (inputs as observe.alert builds them)."""
    return Observations(
        run_id=run_id, run_status=status, run_duration_s=40.0, run_cost=0.1,
        models=[ModelObservation("fct_claims", "fct", 12.0, cost=0.01)],
        drift=drift if drift is not None else [
            DriftSignal("fct_claims", "row_count", 9.5, True, "fct"),
            DriftSignal("fct_claims", "sum:amount", -7.25, True, "fct"),
        ],
        validation=validation, feed_last_batch={"claims": now}, now=now,
        evidence_path=f"/var/lib/dqm/evidence/{run_id}",
    )


def _by_status(bodies: list[Any], key: str = "status") -> list[str]:
    return [b[key] for b in bodies]


def test_one_incident_pages_once_lists_related_and_resolves_when_all_clear(
    engine: sa.Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from monitor.core.config import load_config

    from .conftest import write_config

    rules = load_config(write_config(tmp_path)).alerting.rules  # the shipped rules
    pd, chat, hook, am = Receiver(), Receiver(), Receiver(), Receiver()
    try:
        cfg = AlertingConfig(rules=rules, sinks=(
            SinkConfig("pd", "pagerduty", ("critical",), url=pd.url, routing_key_env="K"),
            SinkConfig("chat", "slack", ("critical", "warning"), url_env="SLACK"),
            SinkConfig("hook", "webhook", ("critical",), url=hook.url),
            SinkConfig("am", "alertmanager", url=am.url),
            SinkConfig("log", "log"),
        ))
        sinks = build_sinks(cfg.sinks, {"K": "rk", "SLACK": chat.url})

        def cycle(hours: int, observed: Observations) -> Any:
            with caplog.at_level(logging.INFO, logger="monitor.alerts"):
                res = evaluate_and_reconcile(engine, cfg, observed)
                assert all(d.status == "sent" for d in deliver(engine, sinks, observed.now))
            return res

        # 1. Contract and post-build suite failed, the run failed, two facts metrics
        #    drifted past the hard limit: five critical alerts, one cause.
        res = cycle(0, _bad_delivery("r1", T0, {"contract_claims": 3, "grain_fct_claims": 1}))
        lead = "validation_failed:contract_claims"
        members = ["validation_failed:grain_fct_claims", "run_failed:run",
                   "metric_drift_hard:fct_claims:row_count",
                   "metric_drift_hard:fct_claims:sum:amount"]
        assert res.paged == (lead,)
        assert set(res.fired) == {lead, *members, "metric_drift:fct_claims:row_count",
                                  "metric_drift:fct_claims:sum:amount"}
        (page,) = pd.bodies()
        assert (page["event_action"], page["dedup_key"]) == ("trigger", lead)
        assert page["payload"]["summary"] == (
            "3 failed expectation(s) in suite contract_claims (+4 related)")
        related = page["payload"]["custom_details"]["related"]
        assert [r["dedup_key"] for r in related] == members
        assert [r["model"] for r in related] == ["", "", "fct_claims", "fct_claims"]
        assert {r["evidence"] for r in related} == {"/var/lib/dqm/evidence/r1"}
        (hooked,) = hook.bodies()
        assert (hooked["dedup_key"], hooked["role"], len(hooked["related"])) == (lead, "lead", 4)
        chat_heads = [b["text"].split("\n")[0] for b in chat.bodies()]
        assert sum(h.startswith(":red_circle:") for h in chat_heads) == 1  # one page
        assert sum(h.startswith(":warning:") for h in chat_heads) == 2  # the warnings
        assert "run_failed: Run r1 ended failed" in chat.bodies()[0]["text"]
        # Alertmanager gets every alert, grouped by the shared incident label.
        sent_am = [b[0]["labels"] for b in am.bodies()]
        assert sorted(a["dedup_key"] for a in sent_am if a["severity"] == "critical") == sorted(
            [lead, *members])
        assert {a["incident"] for a in sent_am if a["severity"] == "critical"} == {lead}
        assert len(open_alerts(engine)) == 7  # all recorded
        members_logged = [r for r in caplog.records if "incident=" + lead in r.getMessage()
                          and "related=" not in r.getMessage()]
        assert len(members_logged) == 4 and {r.levelno for r in members_logged} == {
            logging.WARNING}  # lower urgency than the page's ERROR
        assert pages_since(engine) == [("critical", lead)]

        # 2. Same incident next cycle: nothing new anywhere (stable dedup keys).
        n = len(pd.requests), len(chat.requests), len(hook.requests)
        mark = int(max(r["id"] for r in outbox_rows(engine)))
        res = cycle(1, _bad_delivery("r2", T0 + timedelta(hours=1),
                                     {"contract_claims": 3, "grain_fct_claims": 1}))
        assert (res.fired, res.resolved, res.enqueued, res.paged) == ((), (), 0, ())
        # 3. The contract clears, the run still fails and a new fact drifts: the lead
        #    resolves and the newcomer joins the open incident; nobody is paged.
        res = cycle(2, _bad_delivery("r3", T0 + timedelta(hours=2), {"grain_fct_claims": 1},
                                     drift=[DriftSignal("fct_plans", "row_count", 8.0, True,
                                                        "fct")]))
        assert set(res.fired) == {"metric_drift_hard:fct_plans:row_count",
                                  "metric_drift:fct_plans:row_count"}
        assert lead in res.resolved and res.paged == ()
        assert (len(pd.requests), len(hook.requests)) == n[::2]
        assert pages_since(engine, mark) == []
        joined = {a["dedup_key"]: a["labels"].get("incident") for a in open_alerts(engine)}
        assert joined["metric_drift_hard:fct_plans:row_count"] == lead
        # 4. All clear: one resolve per paging sink, under the page's key.
        res = cycle(3, _bad_delivery("r4", T0 + timedelta(hours=3), {}, status="success",
                                     drift=[]))
        assert open_alerts(engine) == []
        assert [(b["event_action"], b["dedup_key"]) for b in pd.bodies()] == [
            ("trigger", lead), ("resolve", lead)]
        assert [(b["status"], b["dedup_key"]) for b in hook.bodies()] == [
            ("firing", lead), ("resolved", lead)]
        heads = [b["text"].split("\n")[0] for b in chat.bodies()]
        assert [h.split("] ")[0] for h in heads] == [
            ":red_circle: [FIRING:critical",  # the page
            ":warning: [FIRING:warning", ":warning: [FIRING:warning",
            ":warning: [FIRING:warning",  # fct_plans drift (its critical twin joined)
            ":white_check_mark: [RESOLVED", ":white_check_mark: [RESOLVED",  # fct_claims drift
            ":white_check_mark: [RESOLVED", ":white_check_mark: [RESOLVED",  # fct_plans, incident
        ]
        # The lead cleared a cycle before the incident: the resolve names the incident.
        assert sum(h.startswith(f":white_check_mark: [RESOLVED] incident {lead} cleared (last: ")
                   for h in heads[-2:]) == 1
        # 5. A new failure later is a new incident: paged again.
        res = cycle(4, _bad_delivery("r5", T0 + timedelta(hours=4), {}, drift=[]))
        assert res.paged == ("run_failed:run",)
        assert [(b["event_action"], b["dedup_key"]) for b in pd.bodies()][-1] == (
            "trigger", "run_failed:run")
    finally:
        for r in (pd, chat, hook, am):
            r.stop()


def test_group_incidents_by_scope_and_open_incident() -> None:
    def crit(key: str, kind: str) -> Alert:
        return Alert(key, key.split(":")[0], kind, "critical", key, key, {"kind": kind})

    new = [crit("run_failed:run", "run_failed"), crit("stale:claims", "freshness"),
           crit("stale:plans", "freshness"), crit("contract:claims", "validation"),
           Alert("slow:run", "slow", "runtime", "warning", "s", "s", {})]
    labelled, leads = group_incidents(new, {})
    # The contract suite leads the run's incident; feed-age alerts are their own.
    assert leads == {"contract:claims": ["run_failed:run"], "stale:claims": ["stale:plans"]}
    assert [a.labels.get("incident") for a in labelled] == [
        "contract:claims", "stale:claims", "stale:claims", "contract:claims", None]
    # With the run's incident still open, a new run alert joins it: no new lead.
    labelled, leads = group_incidents([crit("drift:fct", "drift")], {"run": "contract:claims"})
    assert leads == {} and labelled[0].labels["incident"] == "contract:claims"


def test_hard_drift_pages_by_layer_so_any_mart_name_pages(engine: sa.Engine,
                                                          tmp_path: Path) -> None:
    """The shipped hard-drift rule matches the layer from dbt metadata, not a name prefix:
    a mart called ``orders`` pages, a staging model's drift only warns."""
    from monitor.core.config import load_config

    from .conftest import write_config

    cfg = AlertingConfig(rules=load_config(write_config(tmp_path)).alerting.rules)
    drift = [DriftSignal("orders", "sum:amount", 8.0, True, "fct", 1000.0, 0.4),
             DriftSignal("stg_payments", "row_count", 9.0, True, "stg")]
    res = evaluate_and_reconcile(engine, cfg, obs(drift=drift))
    assert set(res.fired) == {"metric_drift:orders:sum:amount",
                              "metric_drift:stg_payments:row_count",
                              "metric_drift_hard:orders:sum:amount"}
    hard = {a["dedup_key"]: a for a in open_alerts(engine)}["metric_drift_hard:orders:sum:amount"]
    assert hard["summary"] == "orders.sum:amount drifted (z=+8.00, expected 1,000, +40%)"


# -- the crash window between a sink's 2xx and the outbox commit ------------------------

# Delivers due outbox rows; each sink's send kills this very process (SIGKILL) as soon as
# the receiver's 2xx is in, before the row is marked sent: the window a crash can hit.
_DIE_AFTER_2XX = """
import json, os, signal, sys
from datetime import datetime
from monitor.alerting.outbox import deliver
from monitor.alerting.sinks.registry import build_sinks
from monitor.core.sections import SinkConfig
from monitor.store.state import open_state

url, now, configs = sys.argv[1], datetime.fromisoformat(sys.argv[2]), json.loads(sys.argv[3])

class DiesAfter2xx:
    def __init__(self, sink):
        self.sink, self.name, self.timeout_s = sink, sink.name, sink.timeout_s

    def send(self, note, now, idempotency_key=""):
        self.sink.send(note, now, idempotency_key=idempotency_key)
        os.kill(os.getpid(), signal.SIGKILL)

sinks = build_sinks([SinkConfig(**c) for c in configs], {"PD_KEY": "rk", "SLACK_URL": sys.argv[4]})
deliver(open_state(url), {n: DiesAfter2xx(s) for n, s in sinks.items()}, now)
sys.exit(3)  # nothing was due
"""


def test_crash_after_2xx_resends_under_the_same_idempotency_key(
    state_url: str, engine: sa.Engine, receiver: Receiver
) -> None:
    """A process killed between each sink's 2xx and the outbox commit: after the lease
    the next pass sends the row again, with the same Idempotency-Key (and, for PagerDuty
    and Alertmanager, the same dedup_key / label set), so the receiver can drop it; the
    row ends ``sent`` once."""
    import subprocess
    import sys

    configs = [
        {"name": "hook", "kind": "webhook", "url": receiver.url + "/hook"},
        {"name": "chat", "kind": "slack", "url_env": "SLACK_URL"},
        {"name": "pd", "kind": "pagerduty", "url": receiver.url + "/pd",
         "routing_key_env": "PD_KEY"},
        {"name": "am", "kind": "alertmanager", "url": receiver.url},
    ]
    cfg = [SinkConfig(**c) for c in configs]  # type: ignore[arg-type]
    env = {"PD_KEY": "rk", "SLACK_URL": receiver.url + "/slack"}
    reconcile(engine, [SLOW], T0, sinks=cfg)
    assert [(r["sink"], r["status"]) for r in outbox_rows(engine)] == [
        ("hook", "pending"), ("chat", "pending"), ("pd", "pending"), ("am", "pending")]

    # Four passes, each killed right after one sink's 2xx (a claimed row is skipped by
    # the next pass until its lease runs out, so each pass reaches the next sink).
    for n in range(1, 5):
        proc = subprocess.run(
            [sys.executable, "-c", _DIE_AFTER_2XX, state_url, T0.isoformat(),
             json.dumps(configs), env["SLACK_URL"]],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == -9, proc.stderr[-2000:]
        assert len(receiver.requests) == n
    rows = outbox_rows(engine)
    assert [(r["status"], r["attempts"], r["sent_at"]) for r in rows] == [
        ("pending", 0, None)] * 4  # every 2xx was lost with its process

    # Restarted: the next pass after the lease sends each row again and records it once.
    later = T0 + timedelta(minutes=5)
    sent = deliver(engine, build_sinks(cfg, env), later)
    assert [(d.sink, d.status) for d in sent] == [
        ("hook", "sent"), ("chat", "sent"), ("pd", "sent"), ("am", "sent")]
    assert deliver(engine, build_sinks(cfg, env), later + timedelta(hours=1)) == []
    rows = outbox_rows(engine)
    assert [(r["status"], r["attempts"]) for r in rows] == [("sent", 1)] * 4
    assert outbox_counts(engine) == {"sent": 4}

    by_path: dict[str, list[dict[str, Any]]] = {}
    for req in receiver.requests:
        by_path.setdefault(req["path"], []).append(req)
    assert sorted((p, len(reqs)) for p, reqs in by_path.items()) == [
        ("/api/v2/alerts", 2), ("/hook", 2), ("/pd", 2), ("/slack", 2)]
    keys_seen = set()
    for path, (first, again) in by_path.items():
        key = first["headers"]["Idempotency-Key"]
        assert key.startswith("dqm-") and again["headers"]["Idempotency-Key"] == key, path
        keys_seen.add(key)
        if path != "/api/v2/alerts":  # Alertmanager's endsAt moves with the send time
            assert again["json"] == first["json"], path
    assert len(keys_seen) == 4  # one key per outbox row, not per alert
    assert by_path["/pd"][1]["json"]["dedup_key"] == "slow:fct_claims"
    (am1,), (am2,) = (r["json"] for r in by_path["/api/v2/alerts"])
    assert am1["labels"] == am2["labels"] and am1["labels"]["dedup_key"] == "slow:fct_claims"
    assert by_path["/hook"][0]["json"]["dedup_key"] == "slow:fct_claims"

    # The resolve is another outbox row: another key.
    reconcile(engine, [], later, sinks=cfg)
    assert [d.status for d in deliver(engine, build_sinks(cfg, env), later)] == ["sent"] * 4
    resolved_keys = {r["headers"]["Idempotency-Key"] for r in receiver.requests[8:]}
    assert len(resolved_keys) == 4 and not resolved_keys & keys_seen
