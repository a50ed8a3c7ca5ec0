"""Prometheus metrics of the monitor and the small HTTP server that exposes them.

The metric set is fixed by ``docs/contracts.md``. :class:`Metrics` owns its own
``CollectorRegistry`` (never the global one), so tests and several daemons in one
process do not collide. Label sets of models, drift pairs, suites and feeds that
disappear are removed, so a dropped model does not keep exporting its last value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder

from monitor import __version__
from monitor.observe.run import ModelObservation

log = logging.getLogger(__name__)

RUN_STATUSES: tuple[str, ...] = ("success", "failed", "held", "interrupted")

RouteBody = str | bytes | Mapping[str, Any]
Route = Callable[[], tuple[int, RouteBody]]


class Metrics:
    """Every ``dqm_*`` metric, in a private registry, updated from plain values."""

    def __init__(
        self,
        currency: str = "USD",
        version: str = __version__,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._models: set[tuple[str, str]] = set()
        self._drift: set[tuple[str, str, str]] = set()
        self._suites: set[str] = set()
        self._feeds: set[str] = set()
        self._declare(currency)
        self.build_info.labels(version=version).set(1)
        for status in RUN_STATUSES:
            # Pre-create each status at 0 so rate()/increase() see the first run.
            self.runs_total.labels(status=status)

    def _declare(self, currency: str) -> None:
        r = self.registry
        self.build_info = Gauge(
            "dqm_build_info", "Monitor build information; always 1.", ["version"], registry=r
        )
        self.run_duration = Gauge(
            "dqm_run_duration_seconds",
            "Wall-clock duration of the last monitor cycle, in seconds.",
            registry=r,
        )
        self.model_duration = Gauge(
            "dqm_model_duration_seconds",
            "Duration of the model's last build, in seconds.",
            ["model", "layer"],
            registry=r,
        )
        self.model_rows = Gauge(
            "dqm_model_rows",
            "Rows in the model after its last build.",
            ["model", "layer"],
            registry=r,
        )
        self.model_cost = Gauge(
            "dqm_model_cost",
            f"Estimated cost of the model's last build, in {currency}.",
            ["model", "layer"],
            registry=r,
        )
        self.run_cost = Gauge(
            "dqm_run_cost",
            f"Estimated cost of the last monitor cycle, in {currency}.",
            registry=r,
        )
        self.drift_zscore = Gauge(
            "dqm_drift_zscore",
            "Z-score of the metric's latest value against its history (dimensionless).",
            ["model", "layer", "metric"],
            registry=r,
        )
        self.validation_failures = Gauge(
            "dqm_validation_failures",
            "Failed expectations of the suite in the last run (count).",
            ["suite"],
            registry=r,
        )
        self.held_batches = Gauge(
            "dqm_held_batches",
            "Batches of the feed held awaiting a decision (count).",
            ["feed"],
            registry=r,
        )
        self.quarantined_rows = Gauge(
            "dqm_quarantined_rows",
            "Rows of the feed quarantined, total over all batches.",
            ["feed"],
            registry=r,
        )
        self.feed_last_batch = Gauge(
            "dqm_feed_last_batch_timestamp_seconds",
            "Unix time of the feed's newest ingested batch, in seconds.",
            ["feed"],
            registry=r,
        )
        self.last_success = Gauge(
            "dqm_last_success_timestamp_seconds",
            "Unix time of the last successful cycle, in seconds.",
            registry=r,
        )
        self.paused = Gauge("dqm_paused", "1 while the pipeline is paused, else 0.", registry=r)
        self.runs_total = Counter(
            "dqm_runs_total", "Monitor cycles by final status.", ["status"], registry=r
        )
        self.alerts_sent = Counter(
            "dqm_alerts_sent_total",
            "Alert notifications delivered, by sink and severity.",
            ["sink", "severity"],
            registry=r,
        )
        self.job_errors = Counter(
            "dqm_scheduler_job_errors_total",
            "Scheduler jobs that raised, by job.",
            ["scheduler_job"],
            registry=r,
        )
        self.missed_runs = Counter(
            "dqm_scheduler_missed_runs_total",
            "Scheduler runs missed, by job.",
            ["scheduler_job"],
            registry=r,
        )

    # -- run and models -------------------------------------------------------------

    def observe_run(
        self,
        status: str,
        duration_s: float | None,
        cost: float | None,
        models: Sequence[ModelObservation] = (),
        *,
        prune: bool = True,
    ) -> None:
        """Record a finished cycle: count it, set run and per-model gauges.

        With ``prune`` (default) ``models`` is the complete set: series of models not
        in it (or now in another layer) are removed. Pass ``prune=False`` for a partial
        run (e.g. a failed build) to keep the other models' last values.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
        self.runs_total.labels(status=status).inc()
        _set_optional(self.run_duration, duration_s)
        _set_optional(self.run_cost, cost)
        with self._lock:
            for obs in models:
                self._set_model(obs)
            if prune:
                keep = {(m.model, m.layer) for m in models}
                for key in self._models - keep:
                    self._remove_model(key)

    def _set_model(self, obs: ModelObservation) -> None:
        key = (obs.model, obs.layer)
        # A model that moved layers must not keep exporting under its old layer.
        for old in [k for k in self._models if k[0] == obs.model and k != key]:
            self._remove_model(old)
        self._models.add(key)
        for gauge, value in (
            (self.model_duration, obs.duration_s),
            (self.model_rows, obs.rows),
            (self.model_cost, obs.cost),
        ):
            if value is None:
                _remove(gauge, key)
            else:
                gauge.labels(*key).set(value)

    def _remove_model(self, key: tuple[str, str]) -> None:
        for gauge in (self.model_duration, self.model_rows, self.model_cost):
            _remove(gauge, key)
        self._models.discard(key)

    # -- drift, validation, feeds ---------------------------------------------------

    def replace_drift(self, results: Iterable[tuple[str, str, str, float | None]]) -> None:
        """Set all (model, layer, metric, z) results; series not given are removed."""
        items = list(results)
        with self._lock:
            for model, layer, metric, z in items:
                key = (model, layer, metric)
                if z is None or math.isnan(z):
                    _remove(self.drift_zscore, key)
                    self._drift.discard(key)
                else:
                    self.drift_zscore.labels(*key).set(z)
                    self._drift.add(key)
            keep = {(m, layer, k) for m, layer, k, _ in items}
            for key in self._drift - keep:
                _remove(self.drift_zscore, key)
                self._drift.discard(key)

    def set_validation_failures(self, suite: str, n: int) -> None:
        """Set the failed-expectation count of one suite."""
        with self._lock:
            self.validation_failures.labels(suite=suite).set(n)
            self._suites.add(suite)

    def replace_validation_failures(self, failures: Mapping[str, int]) -> None:
        """Set every suite's failure count; suites not given are removed."""
        with self._lock:
            for suite, n in failures.items():
                self.validation_failures.labels(suite=suite).set(n)
            for suite in self._suites - set(failures):
                _remove(self.validation_failures, (suite,))
            self._suites = set(failures)

    def set_feed(
        self, feed: str, held: int, quarantined_rows: int, last_batch_ts: float | None
    ) -> None:
        """Set a feed's held batches, quarantined rows and newest batch time (Unix s)."""
        with self._lock:
            self._set_feed(feed, held, quarantined_rows, last_batch_ts)

    def _set_feed(
        self, feed: str, held: int, quarantined_rows: int, last_batch_ts: float | None
    ) -> None:
        self.held_batches.labels(feed=feed).set(held)
        self.quarantined_rows.labels(feed=feed).set(quarantined_rows)
        if last_batch_ts is None:
            _remove(self.feed_last_batch, (feed,))
        else:
            self.feed_last_batch.labels(feed=feed).set(last_batch_ts)
        self._feeds.add(feed)

    def retain_feeds(self, feeds: Iterable[str]) -> None:
        """Remove the series of feeds not in ``feeds`` (e.g. dropped from config)."""
        keep = set(feeds)
        with self._lock:
            for feed in self._feeds - keep:
                for gauge in (self.held_batches, self.quarantined_rows, self.feed_last_batch):
                    _remove(gauge, (feed,))
            self._feeds &= keep

    # -- daemon state and counters --------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        """Export 1 while paused, else 0."""
        self.paused.set(1 if paused else 0)

    def set_last_success(self, ts: float) -> None:
        """Record the Unix time (s) of the last successful cycle."""
        self.last_success.set(ts)

    def alert_sent(self, sink: str, severity: str, n: int = 1) -> None:
        """Count ``n`` delivered notifications."""
        self.alerts_sent.labels(sink=sink, severity=severity).inc(n)

    def job_error(self, job: str) -> None:
        """Count a scheduler job that raised."""
        self.job_errors.labels(scheduler_job=job).inc()

    def job_missed(self, job: str) -> None:
        """Count a scheduler run that was missed (misfire)."""
        self.missed_runs.labels(scheduler_job=job).inc()

    def declare_jobs(self, jobs: Iterable[str]) -> None:
        """Create the job counters at 0 so they exist before the first error."""
        for job in jobs:
            self.job_errors.labels(scheduler_job=job)
            self.missed_runs.labels(scheduler_job=job)

    def declare_sinks(self, sinks: Iterable[tuple[str, str]]) -> None:
        """Create ``dqm_alerts_sent_total`` at 0 for (sink, severity) pairs."""
        for sink, severity in sinks:
            self.alerts_sent.labels(sink=sink, severity=severity)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type for an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 9108,
        extra_routes: Mapping[str, Route] | None = None,
    ) -> MetricsServer:
        """Serve this registry; see :func:`serve`."""
        return serve(self.registry, host=host, port=port, extra_routes=extra_routes)


def _set_optional(gauge: Gauge, value: float | None) -> None:
    if value is not None:
        gauge.set(value)


def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to remove
        gauge.remove(*labels)


# -- HTTP server -------------------------------------------------------------------


class MetricsServer:
    """A running metrics HTTP server (threaded, in a daemon thread)."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self._httpd = httpd
        self.host: str = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever, name=f"metrics-http-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9108``."""
        return f"http://{self.host}:{self.port}"

    def shutdown(self) -> None:
        """Stop serving and close the socket; idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops SYNs when many scrapers (or probes) arrive at once,
    # and a dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 128


def serve(
    registry: CollectorRegistry,
    *,
    host: str = "127.0.0.1",
    port: int = 9108,
    extra_routes: Mapping[str, Route] | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` from ``registry`` plus ``extra_routes`` (path -> callable).

    A route callable returns ``(status_code, body)``; a mapping body is sent as JSON,
    text as ``text/plain``. Port 0 binds a free port (read it from ``.port``).
    """
    routes = dict(extra_routes or {})
    if "/metrics" in routes:
        raise ValueError("/metrics is served by the registry; it cannot be overridden")
    handler = _make_handler(registry, routes)
    httpd = _Server((host, port), handler)
    httpd.daemon_threads = True
    return MetricsServer(httpd)


def _make_handler(
    registry: CollectorRegistry, routes: Mapping[str, Route]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dqm-monitor"

        def do_GET(self) -> None:
            self._respond(send_body=True)

        def do_HEAD(self) -> None:
            self._respond(send_body=False)

        def _respond(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                    status, body = 200, encoder(registry)
                elif path in routes:
                    status, body, ctype = _encode(*routes[path]())
                else:
                    status, body, ctype = 404, b"not found\n", "text/plain; charset=utf-8"
            except Exception:  # A broken probe must answer 500, not kill the server.
                log.exception("metrics endpoint %s failed", path)
                status, body, ctype = 500, b"internal error\n", "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Scrapes every few seconds would flood stderr; keep them at debug.
            log.debug("metrics http: " + format, *args)

    return Handler


def _encode(status: int, body: RouteBody) -> tuple[int, bytes, str]:
    if isinstance(body, Mapping):
        return status, json.dumps(body).encode(), "application/json"
    if isinstance(body, str):
        body = body.encode()
    return status, body, "text/plain; charset=utf-8"
