"""The incident page (``GET /incidents/{id}``): everything the responder knows about one incident.

One self-contained HTML page, whatever state the incident is in (capturing, attributed, abstained,
failed, resolved; incidents stored before evidence and links existed too):

- a header with the state, alert, service and the verdict at a glance (``#verdict``), then links;
- a chart (``#chart``): the incident's timeline (the Prometheus burn-rate and SLI series over the
  baseline and incident windows, the kernel's signals per flight-recorder interval, the
  incident's moments marked), and the key signals, baseline vs incident, as grouped bars;
- the hypotheses with their supporting and contradicting evidence and the arithmetic behind each
  confidence (``#evidence``), and under the verdict the rule that decided it (``#decision``);
- the Prometheus queries, the trace dependencies and exemplar traces, the kernel capture and its
  own cost, and the alerts.

No external assets and no JavaScript: the CSS is inline and the chart is inline SVG
(``responder.render.chart``). Every value taken from the incident is HTML-escaped and only
http(s) URLs become links. It renders an ``IncidentView`` (``responder.render.view``), which also
words the numbers, so they read as in the chat thread.
"""
from __future__ import annotations

import html
import logging
import time
from typing import Any
from urllib.parse import quote, urlparse

from capture.attribution import peers
from capture.attribution.verdict import Evidence
from capture.schemas import CaptureCost, CaptureResult
from common.timefmt import unix_seconds
from responder.model.evidence import (
    Dependency,
    DependencyWindow,
    PrometheusEvidence,
    QueryResult,
    TraceEvidence,
    Window,
    as_dict,
)
from responder.render import chart
from responder.render.view import (
    IncidentView,
    capture_problems,
    change,
    clock,
    confidence_phrase,
    confirms,
    duration,
    likelihood,
    num,
    pct,
    rose,
    verdict_phrase,
)

log = logging.getLogger(__name__)

CSS = """
:root{--fg:#1f2933;--muted:#616e7c;--line:#d9e2ec;--bg:#f5f7fa;--ok:#2f7d32;--bad:#c62828;--warn:#9a5b00}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
header{border-left:6px solid var(--muted);background:var(--bg);padding:10px 16px;margin-bottom:8px}
header.state-attributed{border-color:#1565c0}header.state-abstained{border-color:#a07800}
header.state-failed{border-color:var(--bad)}header.state-resolved{border-color:var(--ok)}
.badge{display:inline-block;margin:0;padding:2px 8px;border-radius:3px;color:#fff;background:var(--muted);
 font-size:12px;font-weight:700;letter-spacing:.06em}
.state-attributed .badge{background:#1565c0}.state-abstained .badge{background:#a07800}
.state-failed .badge{background:var(--bad)}.state-resolved .badge{background:var(--ok)}
h1{font-size:24px;margin:6px 0 2px;word-break:break-word}
h2{font-size:17px;margin:28px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:16px 0 6px}
.meta{color:var(--muted);margin:2px 0 10px}
.verdict{font-size:17px;padding:8px 12px;background:#fff;border:1px solid var(--line);border-radius:4px}
.verdict .label{color:var(--muted);font-size:13px;text-transform:uppercase;letter-spacing:.05em;margin-right:6px}
.verdict.attributed strong{color:#1565c0}.verdict.abstained strong{color:#a07800}
.verdict.failed strong{color:var(--bad)}
.conf{font-weight:600;white-space:nowrap}
table{border-collapse:collapse;width:100%;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
thead th{color:var(--muted);font-weight:600;white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.hyp th{background:var(--bg);font-size:14px}
tr.supports td.role{color:var(--ok);white-space:nowrap}tr.contradicts td.role{color:var(--bad);white-space:nowrap}
.up{color:var(--bad);font-weight:600}
.warn{color:var(--warn);background:#fff8e6;border:1px solid #f0d9a8;border-radius:4px;padding:6px 10px}
.empty,.note{color:var(--muted)}.empty{font-style:italic}
code{font:12px/1.35 ui-monospace,"DejaVu Sans Mono",monospace;background:var(--bg);padding:0 3px;
 border-radius:2px;word-break:break-all}
pre{white-space:pre-wrap;word-break:break-word;background:var(--bg);padding:8px;border-radius:4px;font-size:12px}
.kind{display:inline-block;min-width:5.5em;color:var(--muted);font-size:12px}
.chip{display:inline-block;margin:1px 2px}
ul.links,ul.plain{margin:4px 0;padding-left:18px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:4px 0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
#chart{margin:0}#chart svg{display:block;max-width:100%;height:auto}
footer{margin-top:32px;color:var(--muted);font-size:12px}
"""


def render_incident_page(incident: dict[str, Any]) -> str:
    """The incident as an HTML page. Never raises for missing or odd keys: it says what is missing."""
    view = IncidentView.of(incident)
    title = f"{view.alertname} · {view.state} · {view.id or '?'}"
    parts = [
        _header(view),
        _links_section(view),
        _chart_section(view),
        _evidence_section(view),
        _prometheus_section(view.prometheus),
        _traces_section(view.traces, view.capture),
        _capture_section(view),
        _alerts_section(view),
        _footer(view),
    ]
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(parts) + "\n</main></body></html>\n")


# ---------------------------------------------------------------------------------------------
# header, verdict, links


def _header(view: IncidentView) -> str:
    meta = []
    if view.service:
        meta.append(f"service <b>{_e(view.service)}</b>")
    meta.append(f"incident <code>{_e(view.id or '?')}</code>")
    meta.append(f"status <b>{_e(view.status)}</b>")
    if view.playbook:
        meta.append(f"playbook <code>{_e(view.playbook)}</code>")
    meta.append(_e(_burn_line(view)))
    error = f"<p class=warn>Pipeline error:</p><pre>{_e(view.error)}</pre>" if view.error else ""
    return (f'<header class="state-{_e(view.state)}"><p class=badge>{_e(view.state.upper())}</p>'
            f"<h1>{_e(view.alertname)}</h1><p class=meta>{' · '.join(meta)}</p>"
            f"{_verdict_box(view)}{error}</header>")


def _burn_line(view: IncidentView) -> str:
    start = view.burn_start
    if start is None:
        return "start time unknown"
    if view.status == "resolved":
        end = view.burn_end
        if end is not None and end >= start:
            return f"burned for {duration(end - start)} ({clock(start)} → {clock(end)} UTC)"
        return f"resolved; burning since {clock(start)} UTC"
    return f"firing since {clock(start)} UTC ({duration(max(0.0, time.time() - start))} ago)"


def _verdict_box(view: IncidentView) -> str:
    verdict = view.verdict
    if verdict is not None:
        if verdict.domains:
            cls = "attributed"
            inner = (f"<span class=label>Fault domain</span><strong>{_e(' + '.join(verdict.domains))}</strong> "
                     f"<span class=conf>{_e(confidence_phrase(verdict))}</span>")
            if verdict.calibration:
                inner += f" <span class=conf>({_e(verdict.calibration)})</span>"
        else:
            cls = "abstained"
            inner = (f"<span class=label>Verdict</span><strong>abstained</strong>: "
                     f"{_e(verdict.abstain_reason or 'no reason given')}")
    elif view.error:
        cls = "failed"
        first = view.error.strip().splitlines()[0] if view.error.strip() else "unknown error"
        inner = f"<span class=label>Verdict</span><strong>none</strong>: the capture or pipeline failed: {_e(first)}"
    elif view.status == "resolved":
        cls = "none"
        inner = "<span class=label>Verdict</span><strong>none</strong>: resolved before an attribution was made"
    else:
        cls = "capturing"
        inner = ("<span class=label>Verdict</span><strong>not yet</strong>: capturing and attributing; "
                 "this page shows the result when it is in")
    if verdict is not None and verdict.decision:
        inner += f"<div class=note id=decision>How: {_e(verdict.decision)}</div>"
    if view.preliminary is not None:
        what = ("the capture is running" if verdict is None else "the capture confirmed it"
                if confirms(view.preliminary, verdict) else "the capture changed it")
        inner += (f"<div class=note id=preliminary>Preliminary verdict at the alert's receipt, from the flight "
                  f"recorder: {_e(verdict_phrase(view.preliminary))}; {what}.</div>")
    return f'<div id=verdict class="verdict {cls}">{inner}</div>'


def _links_section(view: IncidentView) -> str:
    if not view.links:
        return _section("Links", "links", "<p class=empty>No links recorded for this incident.</p>")
    items = "".join(f"<li><span class=kind>{_e(link.kind)}</span> {_a(link.url, link.title)}</li>"
                    for link in view.links)
    return _section("Links", "links", f"<ul class=links>{items}</ul>")


# ---------------------------------------------------------------------------------------------
# hypotheses and evidence


def _evidence_section(view: IncidentView) -> str:
    if not view.hypotheses:
        why = ("No hypotheses yet: the verdict is not in." if view.verdict is None
               else "The verdict weighed no hypotheses (nothing was measured to weigh).")
        return _section("Hypotheses and evidence", "hypotheses", f"<p id=evidence class=empty>{why}</p>")
    rows = []
    for rank, h in enumerate(view.hypotheses, 1):
        tag = " · <b>named in the verdict</b>" if h.domain in view.domains else ""
        rows.append(f"<tr class=hyp><th colspan=8>{rank}. {_e(h.domain)} "
                    f"<span class=conf>{_e(likelihood(h))}</span>{tag} · "
                    f"{len(h.supporting)} supporting, {len(h.contradicting)} contradicting</th></tr>")
        if h.arithmetic:
            calibrated = (f" · calibrated: score {h.score:.2f} → {pct(h.confidence)} in the lab"
                          if h.score is not None else "")
            rows.append(f"<tr class=math><td colspan=8 class=note>{_e(h.arithmetic + calibrated)}</td></tr>")
        for role, evs in (("supports", h.supporting), ("contradicts", h.contradicting)):
            rows += [_evidence_row(role, ev) for ev in evs]
        if not h.supporting and not h.contradicting:
            rows.append("<tr><td colspan=8 class=empty>no evidence recorded</td></tr>")
    head = ("<thead><tr><th></th><th>Signal</th><th>Source</th><th class=num>Baseline</th>"
            "<th class=num>Incident</th><th>Unit</th><th>Summary</th><th>Link</th></tr></thead>")
    return _section("Hypotheses and evidence", "hypotheses",
                    f"<table id=evidence>{head}<tbody>{''.join(rows)}</tbody></table>")


def _evidence_row(role: str, ev: Evidence) -> str:
    moved = " up" if role == "supports" and rose(ev.baseline, ev.incident) else ""
    link = _a(ev.link, "evidence") if ev.link else ""
    return (f"<tr class={role}><td class=role>{'✔' if role == 'supports' else '✘'} {role}</td>"
            f"<td><code>{_e(ev.signal)}</code></td><td>{_e(ev.source)}</td>"
            f"<td class=num>{_e(num(ev.baseline))}</td><td class='num{moved}'>{_e(num(ev.incident))}</td>"
            f"<td>{_e(ev.unit)}</td><td>{_e(ev.summary)}</td><td>{link}</td></tr>")


# ---------------------------------------------------------------------------------------------
# Prometheus and traces


def _prometheus_section(prom: PrometheusEvidence | None) -> str:
    if prom is None:
        return _section("Prometheus", "prometheus",
                        "<p class=empty>No Prometheus evidence was gathered for this incident.</p>")
    parts = []
    if not prom.reachable:
        attempts = f" (after {prom.attempts} attempts)" if prom.attempts else ""
        parts.append(f"<p class=warn>Prometheus could not be reached: {_e(prom.error or 'no error given')}"
                     f"{attempts}</p>")
    parts.append(_windows_line(prom.baseline, prom.incident))
    if prom.queries:
        rows = "".join(_query_row(q) for q in prom.queries)
        parts.append("<table id=prometheus-queries><thead><tr><th>Query</th><th class=num>Baseline mean</th>"
                     "<th class=num>Baseline max</th><th class=num>Incident mean</th><th class=num>Incident max</th>"
                     f"<th>Unit</th><th>Links</th></tr></thead><tbody>{rows}</tbody></table>")
    elif prom.reachable:
        parts.append("<p class=empty>No queries were run.</p>")
    return _section("Prometheus", "prometheus", "".join(parts))


def _query_row(q: QueryResult) -> str:
    err = f"<br><span class=warn>{_e(q.error)}</span>" if q.error else ""
    links = " · ".join(_a(url, label) for label, url in (("Prometheus graph", q.link),
                                                          ("Grafana", q.grafana_link)) if url)
    moved = " up" if q.kind in chart.CHART_KINDS and rose(q.baseline.mean, q.incident.mean) else ""
    return (f"<tr><td><b>{_e(q.title or q.name or 'query')}</b> <span class=kind>{_e(q.kind)}</span><br>"
            f"<code>{_e(q.expr)}</code>{err}</td>"
            f"<td class=num>{_e(num(q.baseline.mean))}</td><td class=num>{_e(num(q.baseline.max))}</td>"
            f"<td class='num{moved}'>{_e(num(q.incident.mean))}</td><td class=num>{_e(num(q.incident.max))}</td>"
            f"<td>{_e(q.unit)}</td><td>{links}</td></tr>")


def _traces_section(traces: TraceEvidence | None, capture: CaptureResult | None = None) -> str:
    if traces is None:
        return _section("Traces", "traces", "<p class=empty>No trace evidence was gathered for this incident.</p>")
    parts = []
    if not traces.reachable:
        parts.append(f"<p class=warn>The {_e(traces.backend)} backend could not be reached: "
                     f"{_e(traces.error or 'no error given')}</p>")
    spans = [num(w.spans if w else None) for w in (traces.baseline, traces.incident)]
    parts.append(f"<p>Backend <b>{_e(traces.backend)}</b>, service <b>{_e(traces.service or '?')}</b>: "
                 f"{_e(spans[0])} spans in the baseline, {_e(spans[1])} in the incident.</p>")
    parts.append(_windows_line(traces.baseline, traces.incident))
    if traces.dependencies:
        head = ("<thead><tr><th>Kind</th><th>Dependency</th><th class=num>Calls</th><th class=num>Errors</th>"
                "<th>Error types</th><th class=num>p50 ms</th><th class=num>p90 ms</th><th class=num>p99 ms</th>"
                "<th class=num>TTFT p90 ms</th><th class=num>Retries</th><th>Peers</th>"
                "<th>Kernel, on its path</th></tr></thead>")
        hosts = peers.hosts_from(capture)
        rows = "".join(_dep_row(d, capture, hosts) for d in traces.dependencies)
        parts.append(f"<p class=note>Each cell is baseline → incident; — means not seen in that window. Peers are "
                     "where the calls went; the kernel's counts are those to the same peers (per second).</p>"
                     f"<table id=trace-dependencies>{head}<tbody>{rows}</tbody></table>")
    elif traces.reachable:
        parts.append("<p class=empty>No dependency spans in either window.</p>")
    if traces.exemplars:
        items = "".join(f"<li><code>{_e(x.trace_id)}</code> {_e(x.why)}"
                        + (f" · {_a(x.url, 'open trace')}" if x.url else "") + "</li>" for x in traces.exemplars)
        parts.append(f"<h3>Exemplar traces</h3><ul class=plain id=exemplars>{items}</ul>")
    return _section("Traces", "traces", "".join(parts))


def _dep_row(dep: Dependency, capture: CaptureResult | None = None, hosts: peers.Hosts | None = None) -> str:
    b, i = dep.baseline, dep.incident
    called = {**(b.peers if b else {}), **(i.peers if i else {})}
    peer_cell = ", ".join(f"<code>{_e(p)}</code>" for p in list(called)[:3]) or "—"
    kernel = peers.kernel_on_path(capture, frozenset(called), hosts or {})
    kernel_cell = "<br>".join(f"{_e(what)} {_e(change(base, inc, u))}" for what, base, inc, u in kernel) or "—"

    def cell(key: str, flag: bool = True) -> str:
        bv = None if b is None else getattr(b, key)
        iv = None if i is None else getattr(i, key)
        up = " up" if flag and rose(bv, iv) else ""
        return f"<td class='num{up}'>{_side(b, bv)} → {_side(i, iv)}</td>"

    types = [_e(label + ", ".join(f"{k} ×{num(v)}" for k, v in side.error_types.items()))
             for label, side in (("", i), ("baseline: ", b)) if side is not None and side.error_types]
    return (f"<tr><td>{_e(dep.kind)}</td><td><code>{_e(dep.name)}</code></td>"
            f"{cell('count', False)}{cell('errors')}<td>{'<br>'.join(types)}</td>{cell('p50_ms')}{cell('p90_ms')}"
            f"{cell('p99_ms')}{cell('ttft_p90_ms')}{cell('retries')}<td>{peer_cell}</td><td>{kernel_cell}</td></tr>")


def _side(window: DependencyWindow | None, value: float | None) -> str:
    return "—" if window is None else _e(num(value))


def _windows_line(baseline: Window | None, incident: Window | None) -> str:
    parts = []
    for name, w in (("baseline", baseline), ("incident", incident)):
        if w is not None and w.seconds is not None:  # set only with both ends, in order
            parts.append(f"{name} {clock(w.start or 0)} → {clock(w.end or 0)} UTC ({duration(w.seconds)})")
    return f"<p class=note>Windows: {_e('; '.join(parts))}.</p>" if parts else ""


# ---------------------------------------------------------------------------------------------
# kernel capture, alerts, footer


def _pod_counters(pod: dict[str, Any]) -> str:
    """A pod's three largest counters in a fanned-out capture."""
    counters = pod.get("counters")
    if not isinstance(counters, dict) or not counters:
        return ""
    top = sorted(((k, v) for k, v in counters.items() if isinstance(v, (int, float))), key=lambda kv: -kv[1])[:3]
    return ": " + ", ".join(f"{_e(k)} {v:,.0f}" for k, v in top)


def _capture_section(view: IncidentView) -> str:
    capture = view.capture
    if capture is None:
        if view.verdict is None and view.status != "resolved" and not view.error:
            text = "No kernel capture recorded yet."
        else:
            text = "No kernel capture for this incident; the verdict rests on traces and metrics only."
        return _section("Kernel capture", "capture", f"<p class=empty>{text}</p>")
    facts = [("Capture", f"<code>{_e(capture.id)}</code> on node <code>{_e(capture.node)}</code>"),
             ("Scope", _e(capture.target.describe()))]
    start, end = capture.started_at, capture.ended_at
    if start and end and end >= start:
        facts.append(("Window", _e(f"{clock(start)} → {clock(end)} UTC ({duration(end - start)})")))
    if capture.baseline_note:
        facts.append(("Baseline", _e(capture.baseline_note)))
    if capture.pods:
        facts.append(("Pods", "<br>".join(
            f"<code>{_e(pod.get('namespace') or '?')}/{_e(pod.get('name') or '?')}</code>"
            + (f" ({_e(pod.get('workload_kind') or '')} {_e(pod['workload'])})" if pod.get("workload") else "")
            + f" on <code>{_e(pod.get('node') or '?')}</code>" + ("" if pod.get("captured") else " — not captured")
            + _pod_counters(pod) for pod in capture.pods)))
    if capture.nodes:
        facts.append(("Nodes", "<br>".join(
            f"<code>{_e(n.get('node') or '?')}</code>: {_e(n.get('status') or '?')}"
            + (f" ({_e(n['error'])})" if n.get("error") else "") for n in capture.nodes)))
    if capture.workloads:
        facts.append(("Workloads", "<br>".join(f"<code>{_e(w.get('path') or '?')}</code>"
                                                + (f" pod {_e(w['pod_uid'])}" if w.get("pod_uid") else "")
                                                for w in capture.workloads)))
    if capture.processes:
        facts.append(("Processes", "<br>".join(f"pid {_e(p.get('pid', '?'))} <code>{_e(p.get('comm') or '?')}</code> "
                                                f"{_e(p.get('exe') or '')}" for p in capture.processes[:10])))
    problems = capture_problems(capture)
    body = "<dl class=facts>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    if problems:
        body += "<h3>Probe problems</h3><ul class=plain>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>"
    body += _cost_table(capture.cost)
    return _section("Kernel capture", "capture", body)


def _cost_table(c: CaptureCost) -> str:
    rows = [("BPF CPU time", f"{num(c.bpf_run_time_ns / 1e6)} ms"),
            ("BPF program runs", num(c.bpf_run_count)),
            ("Events aggregated", num(c.events)),
            ("Events lost", num(c.lost)),
            ("Agent CPU", f"{num(c.agent_cpu_s)} s"),
            ("Start-up (compile, load, attach)", f"{num(c.startup_ms)} ms"),
            ("Wall time", f"{num(c.wall_s)} s")]
    if c.wall_s > 0:
        # As a share of one CPU: the number an operator compares with the workload's own budget.
        share = (c.bpf_run_time_ns / 1e9 + c.agent_cpu_s) / c.wall_s * 100
        rows.append(("BPF + agent CPU, share of one core", f"{num(share)}%"))
    table = "".join(f"<tr><th>{_e(k)}</th><td class=num>{_e(v)}</td></tr>" for k, v in rows)
    return (f"<h3>The capture's own cost</h3><p>{_e(c.summary())}.</p>"
            f"<table id=capture-cost style='width:auto'><tbody>{table}</tbody></table>")


def _alerts_section(view: IncidentView) -> str:
    alerts = view.alerts
    if not alerts:
        return _section("Alerts", "alerts", "<p class=empty>No alerts recorded.</p>")
    rows = []
    for a in alerts:
        labels = as_dict(a.get("labels")) or {}
        chips = " ".join(f"<code class=chip>{_e(k)}={_e(v)}</code>" for k, v in sorted(labels.items()))
        ann = as_dict(a.get("annotations")) or {}
        started = unix_seconds(a.get("startsAt"))
        rows.append(f"<tr><td>{_e(a.get('status') or '?')}</td><td>{_e(labels.get('alertname') or '?')}</td>"
                    f"<td>{chips}</td><td>{_e(ann.get('summary') or ann.get('description') or '')}</td>"
                    f"<td class=num>{_e(clock(started) + ' UTC' if started else '?')}</td></tr>")
    return _section("Alerts", "alerts", "<table><thead><tr><th>Status</th><th>Alert</th><th>Labels</th>"
                    f"<th>Summary</th><th class=num>Started</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _footer(view: IncidentView) -> str:
    iid = view.id
    api = f' · as JSON: <a href="/api/incidents/{_e(quote(iid, safe=""))}">/api/incidents/{_e(iid)}</a>' if iid else ""
    when = f"updated {clock(view.updated_at)} UTC · " if view.updated_at else ""
    return f"<footer>{_e(when)}rendered {_e(clock(time.time()))} UTC{api}</footer>"


# ---------------------------------------------------------------------------------------------
# the chart


def _chart_section(view: IncidentView) -> str:
    try:
        inner = chart.svg(view)
    except Exception as e:  # a chart bug must not take the rest of the page down with it
        log.exception("incident=%s event=chart_failed", view.id)
        inner = f"<p class=warn>The chart could not be drawn: {_e(repr(e))}</p>"
    if inner is None:
        inner = f"<p class=empty>no evidence yet</p><p class=note>{_e(chart.prometheus_absence(view.prometheus))}</p>"
    caption = ("Top: Prometheus burn-rate and SLI series; the shaded spans are the baseline and incident windows. "
               "Bottom: the top hypothesis' supporting signals and the trace dependencies whose p90 moved most, "
               "baseline vs incident, each scaled to its larger value and labelled with the real one.")
    return _section("Chart", "chart-section", f"<figure id=chart>{inner}<figcaption class=note>{_e(caption)}"
                                              "</figcaption></figure>")


# ---------------------------------------------------------------------------------------------
# small helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _a(url: Any, label: Any) -> str:
    """A link that opens apart from this page; anything but http(s) (javascript:, data:) stays text."""
    url = str(url or "").strip()
    try:
        scheme = urlparse(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme in ("http", "https"):
        return f'<a href="{_e(url)}" rel="noopener noreferrer" target="_blank">{_e(label)}</a>'
    return f"{_e(label)} <code>{_e(url)}</code>"


def _section(title: str, section_id: str, body: str) -> str:
    return f"<section id={section_id}><h2>{_e(title)}</h2>{body}</section>"


