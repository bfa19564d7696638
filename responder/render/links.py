"""Links an incident carries: where to look next, built from settings and the evidence.

This module owns every URL the responder makes for people: a Prometheus graph or Grafana
Explore view of a query over the incident's windows, one trace in the configured trace UI, the
incident page, and the list of all of them (``incident_links``) that the page and the chat
report show. URLs are encoded here, once; callers never paste text into a URL themselves.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from responder.config import Settings


def prometheus_graph_url(settings: Settings, expr: str, start: float, end: float) -> str | None:
    """Prometheus's graph page showing ``expr`` from ``start`` to ``end`` (Unix seconds).

    None when no Prometheus is configured. The public URL wins: it is the one people can open.
    """
    base = (settings.prometheus_public_url or settings.prometheus_url or "").rstrip("/")
    if not base:
        return None
    # Whole seconds, rounded outwards so the graph covers both ends of the window.
    end_s = math.ceil(end)
    range_s = max(1, end_s - math.floor(start))
    params = {
        "g0.expr": expr,
        "g0.tab": "0",  # the graph tab, not the table
        "g0.range_input": f"{range_s}s",
        "g0.end_input": datetime.fromtimestamp(end_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }
    # %20 rather than '+': the UI decodes with decodeURIComponent, which leaves '+' alone.
    return f"{base}/graph?{urlencode(params, quote_via=quote)}"


def grafana_explore_url(settings: Settings, expr: str, start: float, end: float) -> str | None:
    """The configured Grafana Explore template with ``{expr}``, ``{start_ms}``, ``{end_ms}`` filled.

    None without a template.
    """
    template = settings.grafana_explore_url_template
    if not template:
        return None
    at = template.find("{expr}")
    before = template[:at]
    # Explore templates usually carry the query inside URL-encoded JSON ("expr":"{expr}"); there
    # the expression's own quotes must be JSON-escaped first or they would end the JSON string.
    if before.endswith('"') or before.upper().endswith("%22"):
        expr = json.dumps(expr)[1:-1]
    return (template.replace("{expr}", quote(expr, safe=""))
            .replace("{start_ms}", str(int(math.floor(start * 1000))))
            .replace("{end_ms}", str(int(math.ceil(end * 1000)))))


def trace_url(settings: Settings, trace_id: str) -> str | None:
    """Where one trace can be opened: the template, else the built-in store's JSON or Jaeger's UI.

    None for Tempo without a template: Tempo has no UI of its own to link to.
    """
    tid = quote(trace_id, safe="")
    if settings.trace_url_template:
        return settings.trace_url_template.replace("{trace_id}", tid)
    if settings.trace_backend == "builtin":
        return f"{settings.base_url}/api/traces/{tid}"
    if settings.trace_backend == "jaeger" and settings.jaeger_url:
        return f"{settings.jaeger_url.rstrip('/')}/trace/{tid}"
    return None


def incident_url(settings: Settings, incident_id: str) -> str:
    return f"{settings.base_url}/incidents/{quote(str(incident_id), safe='')}"


def incident_links(settings: Settings, incident: Mapping[str, Any], prom: Mapping[str, Any] | None,
                   traces: Mapping[str, Any] | None, runbooks: Iterable[Any]) -> list[dict[str, str]]:
    """Every link for an incident, in reading order, each URL once.

    Order: the alerts' rules (generatorURL), one Prometheus and one Grafana link per metric query,
    exemplar traces, the playbook's runbooks (``Runbook`` objects or ``{title, url}`` dicts), then
    the incident page itself. Alert URLs come from the webhook payload, so only http(s) ones are
    kept: anything else would become a clickable ``javascript:`` link on the page.
    """
    links: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(title: str, url: str | None, kind: str) -> None:
        if url and url not in seen:
            seen.add(url)
            links.append({"title": title, "url": url, "kind": kind})

    for alert in incident.get("alerts") or []:
        url = alert.get("generatorURL")
        if isinstance(url, str) and _is_http_url(url):
            labels = alert.get("labels") or {}
            title = f"Alert rule: {labels.get('alertname', 'unnamed')}"
            if labels.get("severity"):
                title += f" ({labels['severity']})"
            add(title, url, "alert")
    queries = list((prom or {}).get("queries") or [])
    for q in queries:
        add(f"Prometheus: {q.get('title') or q.get('name')}", q.get("link"), "prometheus")
    for q in queries:
        add(f"Grafana: {q.get('title') or q.get('name')}", q.get("grafana_link"), "grafana")
    for ex in (traces or {}).get("exemplars") or []:
        why = f": {ex['why']}" if ex.get("why") else ""
        add(f"Trace {ex.get('trace_id', '')[:16]}{why}", ex.get("url"), "trace")
    for rb in runbooks:
        rb_title, rb_url = (rb.get("title"), rb.get("url")) if isinstance(rb, Mapping) else (rb.title, rb.url)
        add(f"Runbook: {rb_title}", rb_url, "runbook")
    if incident.get("id"):
        add("Incident page", incident_url(settings, incident["id"]), "incident")
    return links


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False
