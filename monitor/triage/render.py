"""Rendering of incident reports (Markdown, HTML, JSON) and drift plots (PNG).

Input is the JSON-safe document of :meth:`monitor.triage.findings.Triage.to_doc`;
nothing here queries anything, so a report can be re-rendered from ``report.json`` alone.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["plot_series", "render_html", "render_json", "render_markdown"]

Doc = Mapping[str, Any]
_COUNT_COLUMNS = (
    ("model", "model"), ("layer", "layer"), ("rows", "rows"), ("rows_before", "last good"),
    ("added", "added"), ("added_before", "added (last good)"),
    ("duplicate_keys", "dup keys"), ("duplicate_keys_before", "dup keys (last good)"),
    ("out_per_in", "rows per input row"), ("out_per_in_before", "(last good)"),
    ("flagged", "grows out of proportion"),
)
_COMMAND_TITLES = (
    ("reproduce", "Reproduce"), ("fix", "Fix"), ("release", "Release"),
    ("reject", "Reject / retract"), ("rollback", "Roll back"), ("resume", "Resume"),
)


def render_json(doc: Doc) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"


# -- Markdown --------------------------------------------------------------------------


def render_markdown(doc: Doc) -> str:
    """The report as GitHub-flavoured Markdown (plots are linked PNGs beside it)."""
    out: list[str] = []
    for title, section in _sections(doc):
        out.append(f"## {title}\n" if title else "")
        out.extend(section(doc, _Md()))
    return "\n".join(line for line in out if line is not None).rstrip() + "\n"


class _Md:
    """Markdown primitives."""

    def head(self, text: str) -> str:
        return f"# {text}\n"

    def para(self, text: str) -> str:
        return text + "\n"

    def bullets(self, items: Sequence[str]) -> str:
        return "".join(f"- {i}\n" for i in items) if items else "- none\n"

    def code(self, lines: Sequence[str]) -> str:
        return "```sh\n" + "\n".join(lines) + "\n```\n" if lines else "_none_\n"

    def image(self, src: str, alt: str) -> str:
        return f"![{alt}]({src})\n"

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        if not rows:
            return "_none_\n"
        esc = [[_cell(v).replace("|", "\\|") for v in r] for r in rows]
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(lines) + "\n"


class _Html(_Md):
    """HTML primitives (every value escaped)."""

    def head(self, text: str) -> str:
        return f"<h1>{html.escape(text)}</h1>"

    def para(self, text: str) -> str:
        return f"<p>{html.escape(text)}</p>"

    def bullets(self, items: Sequence[str]) -> str:
        if not items:
            return "<p><em>none</em></p>"
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"

    def code(self, lines: Sequence[str]) -> str:
        if not lines:
            return "<p><em>none</em></p>"
        return "<pre><code>" + html.escape("\n".join(lines)) + "</code></pre>"

    def image(self, src: str, alt: str) -> str:
        return f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">' \
               f"<figcaption>{html.escape(alt)}</figcaption></figure>"

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        if not rows:
            return "<p><em>none</em></p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>"
                       for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(doc: Doc) -> str:
    """A self-contained HTML page (plots referenced as PNG files in the same folder)."""
    h = _Html()
    parts = []
    for title, section in _sections(doc):
        if title:
            parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.extend(section(doc, h))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
             "padding:3px 6px;text-align:left}pre{background:#f4f4f4;padding:8px;"
             "overflow-x:auto}img{max-width:100%}.cause{font-size:1.2em;color:#a00}")
    title = html.escape(f"Incident {doc.get('run_id')}: {doc.get('root_cause')}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


# -- sections (shared by both renderers) --------------------------------------------------

Section = Callable[[Doc, _Md], list[str]]


def _sections(doc: Doc) -> list[tuple[str, Section]]:
    return [
        ("", _summary), ("Timeline", _timeline), ("Counts per layer", _counts),
        ("Expansion point", _expansion), ("Batches and columns", _batches),
        ("Full refresh vs incremental", _diff), ("Root cause", _root_cause),
        ("Drift plots", _plots), ("Slowest models", _slow), ("Query plan", _query_plan),
        ("Validation failures", _validation), ("Alerts", _alerts),
        ("Sample rows", _samples), ("Commands", _commands), ("Notes", _notes),
    ]


def _summary(doc: Doc, f: _Md) -> list[str]:
    run = doc.get("run", {})
    return [
        f.head(f"Incident report: run {doc.get('run_id')}"),
        f.para(f"Root cause: {doc.get('root_cause')} — {doc.get('summary')}"),
        f.para(f"Run status {run.get('status')} ({run.get('reason') or 'no reason recorded'}); "
               f"compared with last good run {doc.get('baseline_run_id') or 'none'}; "
               f"evidence in {doc.get('evidence_dir')}."),
    ]


def _timeline(doc: Doc, f: _Md) -> list[str]:
    rows = [(i.get("at") or "", i.get("phase"), i.get("what")) for i in doc.get("timeline", [])]
    return [f.table(("at (UTC)", "phase", "what"), rows)]


def _counts(doc: Doc, f: _Md) -> list[str]:
    rows = [[c.get(k) for k, _ in _COUNT_COLUMNS] for c in doc.get("counts", [])]
    return [f.table([t for _, t in _COUNT_COLUMNS], rows)]


def _expansion(doc: Doc, f: _Md) -> list[str]:
    ep = doc.get("expansion_point") or {}
    if not ep.get("model"):
        return [f.para(ep.get("reason") or "none")]
    lines = [f.bullets([
        f"model: {ep.get('model')} ({ep.get('layer')}); output multiplied: {ep.get('grew')}",
        f"why: {ep.get('reason')}",
        f"join key: {ep.get('input')}.{ep.get('key')} = {ep.get('model')}.{ep.get('model_key')}",
        f"input carrying the duplicated keys: {ep.get('input')}"
        + (f" (raw source {ep.get('source')}, batches {', '.join(ep.get('batches') or [])})"
           if ep.get("source") else ""),
        f"rows {ep.get('rows_before')} → {ep.get('rows')}; duplicated keys: "
        f"{ep.get('duplicated_keys')}",
    ])]
    keys = [(k.get("key"), k.get("per") or "", k.get("input_rows"), k.get("model_rows"))
            for k in ep.get("offending_keys", [])]
    lines.append(f.table(("key", "within", "input rows", "model rows"), keys))
    return lines


def _batches(doc: Doc, f: _Md) -> list[str]:
    rows = [(b.get("batch_id"), b.get("feed"), Path(str(b.get("source_file"))).name,
             b.get("status"), b.get("rows"), _pct(b.get("repeat_share")), b.get("repeats") or "",
             _pct(b.get("repeat_share_before")), b.get("reason") or "")
            for b in doc.get("batches", [])]
    cols = [(c.get("relation"), c.get("column"), c.get("kind"), _num(c.get("before")),
             _num(c.get("now")), c.get("rows_before"), c.get("rows_now"))
            for c in doc.get("columns", [])]
    return [
        f.table(("batch", "feed", "file", "status", "rows", "repeated rows", "repeats",
                 "repeated (previous batch)", "reason"), rows),
        f.table(("relation", "column", "shift", "last good", "now", "rows (last good)",
                 "rows (now)"), cols),
    ]


def _diff(doc: Doc, f: _Md) -> list[str]:
    iso = doc.get("isolation") or {}
    where = (f"in a {iso['scratch']} ({iso.get('warehouse_copy')}"
             if iso.get("scratch") and iso["scratch"] != "copy" else
             f"on a copy ({iso.get('copy_bytes')} bytes")
    head = (f"Rebuilt {', '.join(iso.get('models') or []) or 'nothing'} with --full-refresh "
            f"{where}, {_num(iso.get('seconds'))} s); "
            f"{iso.get('reason') or ''}. Production checksum before/after: "
            f"{(iso.get('prod_checksum_before') or '-')[:16]} / "
            f"{(iso.get('prod_checksum_after') or '-')[:16]}.")
    rows = [(d.get("model"), "/".join(d.get("key") or []), d.get("prod_rows"),
             d.get("refresh_rows"), d.get("only_in_prod"), d.get("only_in_refresh"),
             d.get("changed"), d.get("prod_duplicate_keys"), d.get("verdict"))
            for d in iso.get("diffs", [])]
    expl = [f"{d.get('model')}: {d.get('explanation')}" for d in iso.get("diffs", [])]
    return [f.para(head),
            f.table(("model", "key", "prod rows", "refresh rows", "only prod", "only refresh",
                     "changed", "prod dup keys", "verdict"), rows),
            f.bullets(expl)]


def _root_cause(doc: Doc, f: _Md) -> list[str]:
    out = [f.para(f"{doc.get('root_cause')}: {doc.get('summary')}"), f.bullets(doc.get("evidence")
                                                                               or [])]
    others = [fi for fi in doc.get("findings", [])[1:]]
    if others:
        out.append(f.para("Also consistent with the evidence (lower priority):"))
        out.append(f.bullets([f"{o.get('cls')}: {o.get('summary')}" for o in others]))
    return out


def _plots(doc: Doc, f: _Md) -> list[str]:
    plots = doc.get("plots", [])
    if not plots:
        return [f.para("no drifting metric to plot")]
    return [f.image(p["file"], f"{p['model']} {p['metric']} (z={_num(p.get('z'))})")
            for p in plots]


def _slow(doc: Doc, f: _Md) -> list[str]:
    rows = [(m.get("model"), m.get("layer"), m.get("duration_s"), m.get("duration_s_before"),
             m.get("rows_affected"), m.get("status")) for m in doc.get("longest_models", [])]
    return [f.table(("model", "layer", "seconds", "seconds (last good)", "rows affected",
                     "status"), rows)]


def _query_plan(doc: Doc, f: _Md) -> list[str]:
    plan = doc.get("query_plan") or {}
    if not plan.get("slowest"):
        return [f.para(plan.get("note") or "no query plan collected")]
    engine = plan.get("engine") or "DuckDB"  # reports written before PostgreSQL
    scanned = (f" Scanned {plan['rows_scanned']} rows"
               + (f", {plan['bytes_scanned']} bytes" if plan.get("bytes_scanned") else "")
               + "." if plan.get("rows_scanned") is not None else "")
    out = [f.para(f"{plan.get('model')}: {engine} query plan of its compiled SQL (SELECT only), "
                  f"{_num(plan.get('seconds'))} s; the full plan in {plan.get('file')}."
                  f"{scanned}")]
    out.append(f.table(("operator", "seconds", "rows", "table / join"),
                       [(o["operator"], _num(o["seconds"]), o["rows"],
                         o.get("table") or o.get("join") or "") for o in plan["slowest"]]))
    pages = any(o.get("pages") is not None for o in plan.get("scans", []))
    out.append(f.table(("scan", "rows scanned", "pages" if pages else "row groups"),
                       [(o["table"], o.get("rows_scanned"),
                         (o.get("pages") if pages else o.get("row_groups")) or "")
                        for o in plan.get("scans", [])]))
    out.append(f.table(("join", "rows in (largest side)", "rows out", "fan-out"),
                       [(o["join"], o["rows_in"], o["rows"], o.get("fan_out"))
                        for o in plan.get("joins", [])]))
    return out


def _validation(doc: Doc, f: _Md) -> list[str]:
    rows = [(v.get("suite"), v.get("target"), v.get("batch_id") or "", v.get("expectation"),
             v.get("column") or "", v.get("unexpected_count"),
             json.dumps(v.get("unexpected_values"), default=str)[:120])
            for v in doc.get("validation_failures", [])]
    return [f.table(("suite", "target", "batch", "expectation", "column", "unexpected",
                     "sample"), rows)]


def _alerts(doc: Doc, f: _Md) -> list[str]:
    rows = [(a.get("kind"), a.get("severity"), a.get("rule") or a.get("sink") or "",
             a.get("summary") or a.get("event") or "", a.get("status") or "",
             a.get("started_at") or a.get("created_at") or "") for a in doc.get("alerts", [])]
    return [f.table(("kind", "severity", "rule / sink", "summary / event", "status", "at"),
                    rows)]


def _samples(doc: Doc, f: _Md) -> list[str]:
    out = []
    for name, rows in (doc.get("samples") or {}).items():
        out.append(f.para(name))
        if rows:
            cols = list(rows[0])[:12]
            out.append(f.table(cols, [[r.get(c) for c in cols] for r in rows[:5]]))
    return out or [f.para("none")]


def _commands(doc: Doc, f: _Md) -> list[str]:
    cmds = doc.get("commands") or {}
    out = []
    for key, title in _COMMAND_TITLES:
        lines = cmds.get(key) or []
        out.append(f.para(title))
        out.append(f.bullets(lines) if key == "fix" else f.code(lines))
    return out


def _notes(doc: Doc, f: _Md) -> list[str]:
    return [f.bullets([*(doc.get("notes") or []), f"generated {doc.get('generated_at')}"])]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return _num(value)
    return str(value).replace("\n", " ")


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _pct(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else ""


# -- plots ---------------------------------------------------------------------------------


def plot_series(path: Path, title: str, series: Sequence[tuple[datetime, float, bool]],
                highlight: datetime | None) -> Path:
    """A metric's history as a PNG: anomalous points red, the incident point circled."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    if not series:
        raise ValueError("nothing to plot")
    when = {x: float(mdates.date2num(x)) for x, _, _ in series}
    xs = [when[p[0]] for p in series]
    ys = [p[1] for p in series]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    try:
        ax.plot(xs, ys, marker="o", color="#3465a4", linewidth=1.2, markersize=3)
        bad = [(when[x], y) for x, y, a in series if a]
        if bad:
            ax.scatter([b[0] for b in bad], [b[1] for b in bad], color="#cc0000", zorder=3,
                       label="anomalous")
        hit = [(when[x], y) for x, y, _ in series if highlight is not None and x == highlight]
        if hit:
            ax.scatter([hit[0][0]], [hit[0][1]], s=140, facecolors="none", edgecolors="#cc0000",
                       linewidths=2, zorder=4, label="this run")
        ax.xaxis_date()
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if bad or hit:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
