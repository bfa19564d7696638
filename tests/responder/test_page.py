"""The incident page: rendered for every incident state, and shown by a real headless browser.

The unit tests parse the HTML with the standard library's parser and look at elements by id
(``#verdict``, ``#evidence``, ``#chart``). The browser tests serve an incident from a real
responder (basic auth) on a loopback port and load it in Debian's ``chromium --headless``: once to
dump the DOM it built, once for a screenshot, kept at ``test-artifacts/incident-page.png``.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import shutil
import signal
import socket
import struct
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from capture.attribution.verdict import Evidence, Hypothesis, Verdict
from capture.schemas import CaptureCost, CaptureResult, CaptureTarget, ProbeResult
from lab.harness import alert_payload
from responder import config
from responder.app import Responder
from responder.http.alertmanager import parse_notification
from responder.render.page import render_incident_page
from tests.responder.test_report import calibrated

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / "test-artifacts" / "incident-page.png"
CHROMIUM = shutil.which("chromium")
BROWSER_TIMEOUT_S = 60.0
USER, PASSWORD = "oncall", "page-pass-7"

T_ALERT = float(int(time.time()) - 900)  # when the burn alert fired: recent, as on a real page
BASELINE = (T_ALERT - 3600 - 600, T_ALERT - 600)
INCIDENT = (T_ALERT - 600, T_ALERT + 300)
LABELS = {"alertname": "LLMTTFTBurn", "severity": "page", "slo": "ttft", "service": "rag",
          "long_window": "1h", "short_window": "5m", "pid": "4242"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# --- reading the page -----------------------------------------------------------------------

class Page(HTMLParser):
    """Elements by id: their text and the tags inside them; and every link's href and rel."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids: dict[str, dict] = {}
        self.links: list[dict[str, str]] = []
        self.tags: list[str] = []
        self._open: list[tuple[str, dict | None]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self._element(tag, dict(attrs), void=tag in VOID)

    def handle_startendtag(self, tag, attrs):
        self._element(tag, dict(attrs), void=True)

    def _element(self, tag, attrs, void):
        self.tags.append(tag)
        for _, el in self._open:
            if el is not None:
                el["inner_tags"].append(tag)
        if tag == "a":
            self.links.append({k: v or "" for k, v in attrs.items()})
        el = None
        if attrs.get("id"):
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']!r}"
            el = self.ids[attrs["id"]] = {"tag": tag, "attrs": attrs, "text": "", "inner_tags": []}
        if not void:
            self._open.append((tag, el))

    def handle_endtag(self, tag):
        for n in range(len(self._open) - 1, -1, -1):
            if self._open[n][0] == tag:
                del self._open[n:]
                return

    def handle_data(self, data):
        for _, el in self._open:
            if el is not None:
                el["text"] += data

    def text(self, element_id: str) -> str:
        assert element_id in self.ids, f"no element #{element_id}"
        return " ".join(self.ids[element_id]["text"].split())

    def inner(self, element_id: str, tag: str) -> int:
        return self.ids[element_id]["inner_tags"].count(tag)


# --- a realistic incident --------------------------------------------------------------------

def series(start: float, end: float, step: float, value) -> list[list]:
    """Points as prometheus_evidence keeps them: [unix seconds, value]."""
    n = int((end - start) // step) + 1
    return [[start + k * step, value(start + k * step)] for k in range(n)]


def burn_1h(t: float) -> float:
    ramp = min(1.0, max(0.0, (t - INCIDENT[0]) / 300))
    return round(0.6 + 0.1 * math.sin(t / 240) + ramp * 17.4, 4)


def burn_5m(t: float) -> float:
    return round(burn_1h(t) * (1.25 if t > INCIDENT[0] else 1.0) + 0.3 * abs(math.sin(t / 60)), 4)


def prometheus_evidence(reachable: bool = True) -> dict:
    step = (INCIDENT[1] - BASELINE[0]) / 239
    windows = {"baseline": {"start": BASELINE[0], "end": BASELINE[1]},
               "incident": {"start": INCIDENT[0], "end": INCIDENT[1]}}
    if not reachable:
        return {"reachable": False, "error": "GET http://prometheus.local:9090/api/v1/query_range: "
                                             "connection refused", "attempts": 3, **windows, "queries": []}
    graph = "http://prometheus.local:9090/graph?g0.expr="
    return {"reachable": True, "error": None, "attempts": 1, **windows, "queries": [
        {"name": "burn_long", "title": "TTFT burn rate, 1h", "kind": "burn_rate", "unit": "x",
         "expr": 'llm_slo:ttft:burn_rate1h{service="rag"}',
         "baseline": {"mean": 0.61, "max": 0.7}, "incident": {"mean": 14.2, "max": 18.1},
         "series": [{"labels": {"service": "rag"}, "points": series(BASELINE[0], INCIDENT[1], step, burn_1h)}],
         "link": graph + "llm_slo%3Attft%3Aburn_rate1h", "grafana_link": "http://grafana.local:3000/explore?x=1",
         "error": None},
        {"name": "burn_short", "title": "TTFT burn rate, 5m", "kind": "burn_rate", "unit": "x",
         "expr": 'llm_slo:ttft:burn_rate5m{service="rag"}',
         "baseline": {"mean": 0.66, "max": 0.98}, "incident": {"mean": 17.9, "max": 22.8},
         "series": [{"labels": {"service": "rag"}, "points": series(BASELINE[0], INCIDENT[1], step, burn_5m)}],
         "link": graph + "llm_slo%3Attft%3Aburn_rate5m", "grafana_link": None, "error": None},
        {"name": "sli", "title": "Share slower than the TTFT threshold, 5m", "kind": "sli", "unit": "ratio",
         "expr": 'llm_slo:ttft:ratio_rate5m{service="rag"}',
         "baseline": {"mean": 0.0007, "max": 0.001}, "incident": {"mean": 0.018, "max": 0.023},
         "series": [{"labels": {"service": "rag"},
                     "points": series(BASELINE[0], INCIDENT[1], step, lambda t: burn_5m(t) / 1000)}],
         "link": None, "grafana_link": None, "error": None},
        {"name": "throttled", "title": "Provider 429 responses", "kind": "signal", "unit": "/s",
         "expr": 'sum(rate(llm_requests_total{service="rag",code="429"}[5m]))',
         "baseline": {"mean": 0.0, "max": 0.0}, "incident": {"mean": 2.4, "max": 3.1},
         "series": [], "link": graph + "rate", "grafana_link": None, "error": None},
    ]}


def dep(count, errors, error_types, p50, p90, p99, ttft_p90, retries) -> dict:
    return {"count": count, "errors": errors, "error_types": error_types, "p50_ms": p50, "p90_ms": p90,
            "p99_ms": p99, "ttft_p50_ms": None if ttft_p90 is None else ttft_p90 / 2, "ttft_p90_ms": ttft_p90,
            "retries": retries, "input_tokens": count * 900, "output_tokens": count * 180,
            "models": ["gpt-4o-mini"] if ttft_p90 else [], "exemplar_trace_ids": []}


def trace_evidence() -> dict:
    return {"backend": "builtin", "service": "rag", "reachable": True, "error": None,
            "baseline": {"start": BASELINE[0], "end": BASELINE[1], "spans": 41_230},
            "incident": {"start": INCIDENT[0], "end": INCIDENT[1], "spans": 9_874},
            "dependencies": [
                {"kind": "llm", "name": "api.openai.com chat", "baseline": dep(3400, 3, {"timeout": 3}, 310, 420, 800, 380, 2),
                 "incident": dep(820, 191, {"429": 172, "timeout": 19}, 900, 3900, 7200, 3100, 158)},
                {"kind": "retrieval", "name": "pgvector search", "baseline": dep(3400, 0, {}, 18, 41, 80, None, 0),
                 "incident": dep(820, 0, {}, 19, 44, 90, None, 0)},
                {"kind": "policy", "name": "guardrails", "baseline": dep(3400, 0, {}, 6, 12, 20, None, 0),
                 "incident": dep(820, 0, {}, 6, 13, 21, None, 0)},
                {"kind": "http", "name": "feature-flags", "baseline": None,
                 "incident": dep(12, 0, {}, 3, 5, 6, None, 0)},
                {"kind": "server", "name": "POST /v1/answer", "baseline": dep(3400, 3, {"500": 3}, 900, 1300, 2100, None, 0),
                 "incident": dep(820, 191, {"503": 191}, 2400, 5200, 9100, None, 0)}],
            "exemplars": [
                {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "url": "http://127.0.0.1:8080/api/traces/4bf92f3577b34da6a3ce929d0e0e4736",
                 "why": "slowest llm span in the incident (7.2 s, 3 retries)"},
                {"trace_id": "00f067aa0ba902b700f067aa0ba902b7", "url": None, "why": "a 429 from the provider"}]}


def verdict_attributed() -> dict:
    return calibrated(Verdict(domains=["provider_throttling"], confidence=0.81, hypotheses=[
        Hypothesis("provider_latency", 0.34, supporting=[
            Evidence("trace.llm.ttft_p90_ms", "Time to first token p90 rose 8x at the provider", 380, 3100, "ms",
                     "trace", "http://127.0.0.1:8080/api/traces/4bf92f3577b34da6a3ce929d0e0e4736")],
            contradicting=[Evidence("trace.llm.error_types", "Most failures are 429 answers, not slow ones",
                                    0, 172, "", "trace")]),
        Hypothesis("provider_throttling", 0.81, supporting=[
            Evidence("prometheus.llm_requests_429_per_s", "The provider answers 429 at 2.4/s", 0.0, 2.4, "/s",
                     "metric", "http://prometheus.local:9090/graph?g0.expr=rate"),
            Evidence("trace.llm.retries", "Client retries to the provider rose 79x", 2, 158, "retries", "trace"),
            Evidence("tcp_connect.connects_per_s", "New connections to the provider rose with the retries",
                     1.1, 9.6, "/s", "kernel")],
            contradicting=[Evidence("tcp_retrans.retransmits_per_s", "No rise in TCP retransmits", 0.4, 0.5, "/s",
                                    "kernel")],
            arithmetic="tls_http.status_429_per_s 0 → 2.4: 1.00; trace.llm.retries 2 → 158: 1.00 · strength 2.00 → "
                       "2.00 / (2.00 + 0.5) = 80%"),
        Hypothesis("network", 0.04, contradicting=[
            Evidence("tcp_retrans.retransmits_per_s", "No rise in TCP retransmits", 0.4, 0.5, "/s", "kernel")]),
    ], decision="named: provider_throttling 81% ≥ 50% and leads provider_latency 34% by 47 points ≥ 15")).to_dict()


def capture_result() -> dict:
    probe = ProbeResult("tcp_retrans", 20.0, counters={"retransmits": 10}, lost=12, truncated="event budget")
    return CaptureResult(
        id="cap-7f3a", node="node-a", target=CaptureTarget(pids=[4242]), started_at=T_ALERT + 5, ended_at=T_ALERT + 25,
        incident={"tcp_retrans": probe}, baseline={}, baseline_note="recorder history, 60 s before the alert",
        processes=[{"pid": 4242, "comm": "python3", "exe": "/usr/bin/python3.11"}],
        cost=CaptureCost(bpf_run_time_ns=38_500_000, bpf_run_count=412_000, events=9_120, lost=12, agent_cpu_s=0.42,
                         startup_ms=640, wall_s=20.7),
        errors=["dns_latency: uprobe on getaddrinfo not attached: libc not found"]).to_dict()


def links() -> list[dict]:
    return [{"title": "Runbook: provider throttling", "url": "https://runbooks.example.com/llm/throttling",
             "kind": "runbook"},
            {"title": "TTFT burn rate in Prometheus", "url": "http://prometheus.local:9090/graph?g0.expr=x",
             "kind": "prometheus"},
            {"title": "Slowest trace", "url": "http://127.0.0.1:8080/api/traces/4bf92f3577b34da6a3ce929d0e0e4736",
             "kind": "trace"}]


def alert(labels: dict | None = None) -> dict:
    a = alert_payload("firing", labels or LABELS, T_ALERT)["alerts"][0]
    a["generatorURL"] = "http://prometheus.local:9090/graph?g0.expr=llm_slo%3Attft%3Aburn_rate1h"
    return a


def incident(state: str = "attributed", *, evidence: bool = True) -> dict:
    """An incident dict as ``GET /api/incidents/{id}`` returns it, in the given state."""
    inc = {"id": "inc-3c1e9a7b20", "group_key": '{}:{alertname="LLMTTFTBurn"}', "status": "firing",
           "created_at": T_ALERT + 1, "updated_at": T_ALERT + 40, "resolved_at": None, "labels": dict(LABELS),
           "alerts": [alert()], "playbook": "llm-latency-burn", "verdict": None, "capture": None, "report": None,
           "thread": {}, "error": None, "evidence": {}, "links": []}
    if state in ("attributed", "resolved"):
        inc["verdict"] = verdict_attributed()
        inc["capture"] = capture_result()
    if state == "abstained":
        inc["verdict"] = Verdict(domains=[], confidence=0.41, abstain_reason="the top two hypotheses are within "
                                 "10 points of each other (provider_latency 41%, network 38%)").to_dict()
    if state == "resolved":
        inc["status"], inc["resolved_at"] = "resolved", T_ALERT + 1500
    if evidence and state != "capturing":
        inc["evidence"] = {"prometheus": prometheus_evidence(), "traces": trace_evidence()}
        inc["links"] = links()
    return inc


# --- unit tests over the states ------------------------------------------------------------

@pytest.mark.slow
def test_attributed_incident_shows_verdict_evidence_and_chart():
    inc = incident("attributed")
    html = render_incident_page(inc)
    page = Page(html)
    assert page.tags.count("script") == 0 and page.tags.count("link") == 0  # no JavaScript, no external CSS
    assert "<h1>LLMTTFTBurn</h1>" in html and "service <b>rag</b>" in html and "ATTRIBUTED" in html

    verdict = page.text("verdict")
    assert "provider_throttling" in verdict and "81% confidence" in verdict
    assert "How: named: provider_throttling 81% ≥ 50% and leads provider_latency 34% by 47 points" in verdict

    # Hypotheses ranked by confidence, every piece of evidence a row.
    table = page.text("evidence")
    assert table.index("1. provider_throttling") < table.index("2. provider_latency") < table.index("3. network")
    evidence_rows = sum(len(h["supporting"]) + len(h["contradicting"]) for h in inc["verdict"]["hypotheses"])
    worked = sum(1 for h in inc["verdict"]["hypotheses"] if h["arithmetic"])
    assert page.inner("evidence", "tr") == 1 + len(inc["verdict"]["hypotheses"]) + worked + evidence_rows
    assert "strength 2.00 → 2.00 / (2.00 + 0.5) = 80%" in table  # the arithmetic under its hypothesis
    assert "The provider answers 429 at 2.4/s" in table and "tcp_connect.connects_per_s" in table
    assert "✘ contradicts" in table and "kernel" in table and "metric" in table

    # The chart: inline SVG with drawn lines, the windows shaded and labelled (matplotlib keeps each
    # text as a comment beside its glyph paths).
    assert page.inner("chart", "svg") == 1 and page.inner("chart", "path") > 50
    svg = html.split("id=chart>", 1)[1]
    for label in ("baseline window", "incident window", "TTFT burn rate, 1h", "llm api.openai.com",
                  "trace.llm.retries", "158 retries"):
        assert label in svg, label

    prom = page.text("prometheus")
    assert "TTFT burn rate, 1h" in prom and "14.2" in prom and "18.1" in prom and "0.61" in prom
    assert "could not be reached" not in prom
    traces = page.text("traces")
    assert "api.openai.com chat" in traces and "420 → 3,900" in traces and "429 ×172" in traces
    assert "— → 5" in traces  # a dependency seen only in the incident
    assert "4bf92f3577b34da6a3ce929d0e0e4736" in traces
    capture = page.text("capture")
    assert "38.5 ms" in capture and "412,000" in capture and "event budget" in capture and "libc not found" in capture
    assert "pid:4242" in capture

    hrefs = {a["href"] for a in page.links}
    assert {"https://runbooks.example.com/llm/throttling", alert()["generatorURL"],
            "http://grafana.local:3000/explore?x=1"} <= hrefs
    for a in page.links:
        if a["href"].startswith("http"):
            assert "noopener" in a["rel"].split(), a


def test_capturing_incident_without_evidence_or_links_keys():
    inc = incident("capturing")
    del inc["evidence"], inc["links"]  # stored before these fields existed
    html = render_incident_page(inc)
    page = Page(html)
    assert "CAPTURING" in html
    assert "not yet" in page.text("verdict")
    assert page.text("evidence").startswith("No hypotheses yet")
    assert "no evidence yet" in page.text("chart") and page.inner("chart", "svg") == 0
    assert "No Prometheus evidence" in page.text("prometheus")
    assert "No trace evidence" in page.text("traces")
    assert "No kernel capture recorded yet" in page.text("capture")
    assert [a["href"] for a in page.links if a["href"].startswith("http")] == [alert()["generatorURL"]]


def test_abstained_incident_names_the_reason():
    page = Page(render_incident_page(incident("abstained")))
    verdict = page.text("verdict")
    assert "abstained" in verdict and "within 10 points" in verdict
    assert "weighed no hypotheses" in page.text("evidence")
    # Prometheus and traces are there, so the chart is too, though no hypothesis gives signals.
    assert page.inner("chart", "svg") == 1


def test_resolved_incident_says_how_long_it_burned():
    html = render_incident_page(incident("resolved"))
    page = Page(html)
    assert "RESOLVED" in html and "burned for 25m" in html
    assert "provider_throttling" in page.text("verdict")


def test_failed_capture_without_verdict_shows_the_error():
    inc = incident("capturing")
    inc["error"] = "capture failed: agent at http://10.0.0.7:9464 unreachable\nTraceback ..."
    html = render_incident_page(inc)
    page = Page(html)
    assert "FAILED" in html
    assert "capture failed: agent at http://10.0.0.7:9464 unreachable" in page.text("verdict")
    assert "Traceback" not in page.text("verdict") and "Traceback" in html  # the detail is further down


def test_prometheus_unreachable_is_said_in_the_table_and_leaves_no_empty_panel():
    inc = incident("attributed")
    inc["evidence"]["prometheus"] = prometheus_evidence(reachable=False)
    html = render_incident_page(inc)
    page = Page(html)
    assert ("Prometheus could not be reached: GET http://prometheus.local:9090/api/v1/query_range: connection "
            "refused (after 3 attempts)") in page.text("prometheus")
    # The bars still draw; no panel is drawn empty, and the Prometheus table says why.
    assert page.inner("chart", "svg") == 1
    chart_svg = html.split("id=chart>", 1)[1].split("</figure>", 1)[0]
    assert "Prometheus: burn rate" not in chart_svg and "Key signals" in chart_svg


def test_nothing_at_all_says_no_evidence_yet():
    inc = incident("abstained", evidence=False)
    inc["evidence"] = {"prometheus": prometheus_evidence(reachable=False), "traces": None}
    page = Page(render_incident_page(inc))
    chart = page.text("chart")
    assert "no evidence yet" in chart and "Prometheus could not be reached" in chart
    assert page.inner("chart", "svg") == 0


def test_hostile_values_are_escaped_and_only_http_links_are_links():
    evil = "<script>alert(1)</script>"
    inc = incident("attributed")
    inc["labels"] = {**LABELS, "alertname": evil, "service": evil}
    inc["alerts"] = [alert({**LABELS, "alertname": evil, "team": '"><img src=x onerror=alert(2)>'})]
    inc["alerts"][0]["generatorURL"] = "javascript:alert(3)"
    inc["alerts"][0]["annotations"]["summary"] = evil
    inc["id"] = 'inc-"<b>'
    inc["error"] = evil
    hyp = inc["verdict"]["hypotheses"][1]
    hyp["domain"] = evil
    hyp["supporting"][0].update(summary=evil, signal=evil + " $x_{", unit="<u>", link="javascript:alert(4)")
    inc["verdict"]["domains"] = [evil]
    inc["verdict"]["abstain_reason"] = evil
    q = inc["evidence"]["prometheus"]["queries"][0]
    q.update(title=evil + " $", expr=evil, link="data:text/html,<script>alert(5)</script>", error=evil)
    q["series"][0]["labels"] = {"pod": evil}
    q["series"].append({"labels": {"pod": "$\\frac{"}, "points": q["series"][0]["points"][:10]})
    deps = inc["evidence"]["traces"]["dependencies"]
    deps[0]["name"] = evil
    deps[0]["incident"]["error_types"] = {evil: 3}
    inc["evidence"]["traces"]["exemplars"][0].update(why=evil, trace_id=evil, url="vbscript:x")
    inc["links"].append({"title": evil, "url": " JavaScript:alert(6)", "kind": evil})
    inc["capture"]["node"] = evil
    inc["capture"]["pods"] = [{"namespace": evil, "name": evil, "uid": "u", "node": evil, "workload_kind": evil,
                               "workload": evil, "captured": False}]
    inc["capture"]["nodes"] = [{"node": evil, "status": evil, "error": evil}]

    html = render_incident_page(inc)
    assert "<script" not in html.lower() and "<img" not in html.lower() and "<u>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = Page(html)
    assert page.tags.count("script") == 0 and page.tags.count("img") == 0
    assert evil in page.text("verdict") and evil in page.text("evidence")
    assert page.inner("chart", "svg") == 1  # "$" in chart labels is drawn as text, not parsed as mathtext
    for a in page.links:
        assert a["href"].startswith(("http://", "https://", "/api/incidents/")), a
    assert not any("alert(" in a["href"] for a in page.links)


def test_a_capture_over_several_nodes_lists_its_pods_and_each_nodes_outcome():
    inc = incident("attributed")
    inc["capture"]["pods"] = [
        {"namespace": "llm", "name": "chat-7d9f-a", "uid": "u1", "node": "node-a", "workload_kind": "Deployment",
         "workload": "chat", "captured": True},
        {"namespace": "llm", "name": "chat-7d9f-c", "uid": "u2", "node": "node-c", "workload_kind": "Deployment",
         "workload": "chat", "captured": False}]
    inc["capture"]["nodes"] = [{"node": "node-a", "status": "ok", "error": None},
                               {"node": "node-c", "status": "no agent", "error": "no capture agent pod on node node-c"}]
    text = Page(render_incident_page(inc)).text("capture")
    assert "llm/chat-7d9f-a (Deployment chat) on node-a" in text
    assert "llm/chat-7d9f-c (Deployment chat) on node-c — not captured" in text
    assert "node-c: no agent (no capture agent pod on node node-c)" in text


def test_malformed_and_partial_evidence_still_renders():
    inc = incident("attributed")
    inc["evidence"] = {"prometheus": {"reachable": True, "queries": [
        {"kind": "burn_rate", "series": [{"points": [["x", "1"], [1, "NaN"], [2], None, [3, "+Inf"]]}]},
        "not a query", {"kind": "sli", "series": "nope", "baseline": None}]},
        "traces": {"dependencies": [{"kind": "llm"}, {"baseline": "?", "incident": {"p90_ms": "slow"}}, 7],
                   "exemplars": [{}], "reachable": False}}
    inc["links"] = [{"url": None}, "http://bare-string", {"title": "no url"}]
    inc["capture"] = {"cost": {"bpf_run_time_ns": "lots", "wall_s": None}, "target": {"pids": [1], "extra": 2}}
    inc["verdict"]["hypotheses"].append({"domain": "dns"})
    inc["verdict"]["confidence"] = None
    inc["alerts"] = [{"labels": None}, "junk"]
    page = Page(render_incident_page(inc))
    assert "provider_throttling" in page.text("verdict") and "? confidence" in page.text("verdict")
    assert "trace backend could not be reached" in page.text("traces")
    assert "pid:1" in page.text("capture")  # a capture stored in part still shows what it has
    for bad in ({}, {"id": "inc-x"}, {"verdict": {"domains": "network"}, "evidence": []}):
        assert "id=verdict" in render_incident_page(bad)


@pytest.mark.slow
def test_chart_stays_small_with_many_points():
    inc = incident("attributed")
    q = inc["evidence"]["prometheus"]["queries"][0]
    q["series"] = [{"labels": {"pod": f"rag-{n}"}, "points": series(BASELINE[0], INCIDENT[1], 1, burn_1h)}
                   for n in range(12)]
    html = render_incident_page(inc)
    chart = html.split("id=chart>", 1)[1].split("</figure>", 1)[0]
    assert "rag-4" in chart and "rag-5" not in chart  # at most five series a query
    assert len(chart) < 400_000, len(chart)
    assert "<image" not in chart  # nothing rasterised


# --- a real browser --------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def served(tmp_path, caplog):
    """A responder with basic auth serving one attributed incident; yields ("host:port", incident id)."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    settings = config.load(env={}, data_dir=tmp_path / "data", webhook_user=USER, webhook_password=PASSWORD,
                           agent_url=f"http://127.0.0.1:{closed_port()}", agent_token="x",
                           playbooks_dir=REPO / "playbooks")
    responder = Responder.build(settings, console_stream=io.StringIO())
    body = alert_payload("firing", LABELS, T_ALERT)
    body["alerts"][0]["generatorURL"] = alert()["generatorURL"]
    raw = json.dumps(body).encode()
    accepted = responder.store.accept(parse_notification(raw), raw)
    # The investigation already ran: its job is done, so the workers leave the incident as set here.
    job = responder.store.claim_job()
    assert job is not None and job.id == accepted.job_id
    responder.store.finish_job(job.id)
    full = incident("attributed")
    responder.store.update_incident(accepted.incident_id, playbook="llm-latency-burn", verdict=full["verdict"],
                                    capture=full["capture"], evidence=full["evidence"], links=full["links"])
    server = TestServer(responder.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"127.0.0.1:{server.port}", accepted.incident_id
    finally:
        await server.close()


async def chromium(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run headless chromium once in its own profile and process group; nothing outlives the call."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; scripts/setup.sh installs it")
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    profile.mkdir()
    env = {**os.environ, "HOME": str(profile), "XDG_CONFIG_HOME": str(profile), "XDG_CACHE_HOME": str(profile)}
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT_S)
    finally:
        # Its own session, so this reaches the renderer and zygote children as well.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.returncode is None:
            await proc.wait()
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def page_statuses(caplog, incident_id: str) -> list[str]:
    """HTTP statuses the server answered for the incident page, in order (from aiohttp's access log)."""
    return [str(r.response_status) for r in caplog.records
            if r.name == "aiohttp.access" and f"/incidents/{incident_id} " in str(getattr(r, "first_request_line", ""))]


def png_size_and_pixels(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    from matplotlib import image

    return (width, height), image.imread(str(path))


@pytest.mark.needs_browser
async def test_browser_renders_the_page_with_basic_auth(served, tmp_path, caplog):
    host, incident_id = served
    url = f"http://{USER}:{PASSWORD}@{host}/incidents/{incident_id}"

    rc, dom, err = await chromium(tmp_path, "--dump-dom", url)
    assert rc == 0, err[-2000:]
    # Chromium asks without credentials, is challenged, and answers with the URL's user and password.
    assert page_statuses(caplog, incident_id)[:2] == ["401", "200"]
    page = Page(dom)
    verdict = page.text("verdict")
    assert "provider_throttling" in verdict and "81% confidence" in verdict
    assert "How: named: provider_throttling 81% ≥ 50% and leads provider_latency 34% by 47 points" in verdict
    table = page.text("evidence")
    hyps = incident("attributed")["verdict"]["hypotheses"]
    rows = len(hyps) + sum(len(h["supporting"]) + len(h["contradicting"]) + bool(h["arithmetic"]) for h in hyps)
    assert page.inner("evidence", "tr") == 1 + rows  # a row per hypothesis, its arithmetic and its evidence
    assert "The provider answers 429 at 2.4/s" in table and "No rise in TCP retransmits" in table
    assert page.inner("chart", "svg") == 1 and page.inner("chart", "path") > 50
    assert "TTFT burn rate, 1h" in page.text("prometheus") and "api.openai.com chat" in page.text("traces")

    shot = tmp_path / "incident-page.png"
    rc, _, err = await chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert rc == 0 and shot.exists(), err[-2000:]
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    (width, height), pixels = png_size_and_pixels(ARTIFACT)
    assert (width, height) == (1280, 2400)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05, "the screenshot is (nearly) one colour"
    # The incident window's red (shading, bars) shows: the chart was painted, not just laid out.
    red = ((abs(rgb[..., 0] - 0xD6 / 255) < 0.03) & (abs(rgb[..., 1] - 0x45 / 255) < 0.03)
           & (abs(rgb[..., 2] - 0x45 / 255) < 0.03))
    assert red.sum() > 500, red.sum()


@pytest.mark.needs_browser
@pytest.mark.parametrize("userinfo", ["", f"{USER}:wrong@"], ids=["no-credentials", "wrong-password"])
async def test_browser_without_valid_credentials_gets_401(served, tmp_path, caplog, userinfo):
    host, incident_id = served
    rc, dom, err = await chromium(tmp_path, "--dump-dom", f"http://{userinfo}{host}/incidents/{incident_id}")
    statuses = page_statuses(caplog, incident_id)
    assert statuses and set(statuses) == {"401"}, statuses
    assert "provider_throttling" not in dom and "id=\"verdict\"" not in dom


def test_a_dependencys_row_shows_its_peers_and_the_kernels_counts_on_its_path():
    inc = incident("attributed")
    deps = inc["evidence"]["traces"]["dependencies"]
    deps[0]["baseline"]["peers"] = {"api.openai.com:443": 3400}
    deps[0]["incident"]["peers"] = {"api.openai.com:443": 820}
    deps[1]["incident"]["peers"] = {"10.0.0.7:5432": 820}
    retrans = lambda n, w: ProbeResult("tcp_retrans", w, counters={"retransmits": n},  # noqa: E731
                                       top={"peers": [{"peer": "10.0.0.9:443", "count": n}]})
    answers = ProbeResult("dns", 20.0, top={"answers": [{"peer": "10.0.0.9 api.openai.com", "count": 5}]})
    flow = lambda ms, w: ProbeResult("tcp_flow", w, top={  # noqa: E731
        "rtt_sum_us": [{"peer": "10.0.0.9:443", "count": int(ms * 1000 * 50)}, {"peer": "10.0.0.7:5432", "count": 5000}],
        "rtt_samples": [{"peer": "10.0.0.9:443", "count": 50}, {"peer": "10.0.0.7:5432", "count": 50}]})
    inc["capture"] = CaptureResult(
        id="cap-1", node="node-a", target=CaptureTarget(pids=[4242]), started_at=T_ALERT, ended_at=T_ALERT + 20,
        incident={"tcp_retrans": retrans(46, 20.0), "dns": answers, "tcp_flow": flow(131, 20.0)},
        baseline={"tcp_retrans": retrans(3, 60.0), "tcp_flow": flow(0.4, 60.0)},
    ).to_dict()
    page = Page(render_incident_page(inc))
    rows = page.text("traces")
    assert "api.openai.com:443" in rows and "retransmits 0.05 → 2.3/s" in rows
    assert "sRTT 0.4 → 131 ms" in rows  # the mean over the peers on its path only
    assert "sRTT 0.1 → 0.1 ms" in rows  # the database's own path
    assert "10.0.0.7:5432" in rows  # the database's peer: no retransmits on its path
    assert rows.count("retransmits") == 1


def test_the_page_says_whether_the_capture_confirmed_the_preliminary_verdict():
    from responder.render.page import render_incident_page
    prelim = {"verdict": {"domains": ["network"], "confidence": 0.8, "score": 0.8, "hypotheses": []}, "at": 1.0}
    base = {"id": "inc-9", "status": "firing", "labels": {"alertname": "A"}, "alerts": [], "preliminary": prelim}
    assert "from the flight recorder: network 80%; the capture is running" in render_incident_page(base)
    same = dict(base, verdict={"domains": ["network"], "confidence": 0.9, "score": 0.9, "hypotheses": []})
    assert "the capture confirmed it" in render_incident_page(same)
    other = dict(base, verdict={"domains": ["dns"], "confidence": 0.9, "score": 0.9, "hypotheses": []})
    assert "the capture changed it" in render_incident_page(other)


def test_the_chart_is_a_timeline_of_the_kernel_signals_with_the_incidents_moments():
    """The capture's recorder series: retransmits rise after the burn began; the kernel panel
    draws them per interval, and the time panels mark the onset, the alert, the preliminary
    verdict and the capture's window. A counter that did not move is not drawn."""
    from responder.render import chart
    inc = incident("attributed")
    onset = T_ALERT - 40
    series = [{"start": t - 1, "end": t, "counters": {"tcp_retrans.retransmits": 0.0 if t <= onset else 30.0,
                                                      "tcp_connect.attempts": 5.0}}
              for t in range(int(onset) - 60, int(T_ALERT) + 12)]
    inc["capture"] = dict(inc["capture"], series=series, started_at=T_ALERT + 1, ended_at=T_ALERT + 11, source="live")
    inc["created_at"] = T_ALERT
    inc["preliminary"] = {"verdict": {"domains": ["network"], "confidence": 0.9, "hypotheses": []}, "at": T_ALERT + 0.4,
                          "window": [onset, T_ALERT]}
    inc["evidence"]["traces"]["timeline"] = [
        {"start": t, "end": t + 5, "requests": 50, "errors": 0 if t < onset else 9, "p90_ms": 300 if t < onset else 900}
        for t in range(int(onset) - 60, int(T_ALERT), 5)]
    from responder.render.view import IncidentView
    svg = chart.svg(IncidentView.of(inc))
    assert svg is not None
    assert "Kernel, per flight-recorder interval" in svg and "tcp_retrans.retransmits (peak 30/s)" in svg
    assert "tcp_connect.attempts" not in svg  # flat: not a signal
    assert "Traces: the service's requests" in svg and "failing (%, right axis)" in svg
    for mark in ("burn began", "preliminary verdict", "capture"):
        assert mark in svg, mark
    png = chart.png(IncidentView.of(inc))
    assert png is not None and png.startswith(b"\x89PNG")
    ARTIFACT.parent.mkdir(exist_ok=True)
    (ARTIFACT.parent / "incident-timeline.png").write_bytes(png)
