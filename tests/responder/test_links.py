"""Links: URLs built from settings and evidence, encoded so they open what they say.

The graph link is opened on a real Prometheus (started here), and the expression it carries is
run by that Prometheus's query API: what a person clicks is what the evidence queried.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest

from responder import config
from responder.playbooks import Runbook
from responder.render.links import grafana_explore_url, incident_links, prometheus_graph_url, trace_url
from tests.responder.prom_fixtures import start_prometheus

# Everything that must be encoded: quotes, braces, '+', '&', '#', '/', '=', spaces and non-ASCII.
EXPR = ('sum by (code) (rate(prometheus_http_requests_total{handler=~"/api/.+", code!="200", '
        'x!="a&b=c#d é"}[1m])) + 0 * vector(1)')
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
END = START + 600.25


def settings(**kw: Any) -> config.Settings:
    return config.load(env={}, **kw)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory):
    server = start_prometheus(tmp_path_factory.mktemp("prom-links"), "global: {scrape_interval: 1s}\n")
    yield server
    server.stop()


@pytest.mark.needs_prometheus
async def test_graph_link_opens_on_a_real_prometheus_and_runs_the_same_expression(prom) -> None:
    url = prometheus_graph_url(settings(prometheus_url=prom.url), EXPR, START, END)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:  # /graph redirects to the UI's page with the query kept
            assert resp.status == 200
            assert parse_qs(resp.url.query_string)["g0.expr"] == [EXPR]
        expr = parse_qs(urlsplit(url).query)["g0.expr"][0]
        async with http.get(f"{prom.url}/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
    assert expr == EXPR
    assert resp.status == 200 and body["status"] == "success", body


def test_graph_link_parts() -> None:
    url = prometheus_graph_url(settings(prometheus_url="http://prom:9090/"), EXPR, START, END)
    base, _, query = url.partition("?")
    assert base == "http://prom:9090/graph"
    assert "+" not in query and " " not in query  # '+' would read as a space in the UI
    params = parse_qs(query)
    assert params == {"g0.expr": [EXPR], "g0.tab": ["0"], "g0.range_input": ["601s"],
                      "g0.end_input": ["2026-03-01 12:10:01"]}


def test_graph_link_prefers_the_public_url_and_needs_one() -> None:
    s = settings(prometheus_url="http://prom:9090", prometheus_public_url="https://prom.example.com/p/")
    assert prometheus_graph_url(s, "up", START, END).startswith("https://prom.example.com/p/graph?g0.expr=up&")
    assert prometheus_graph_url(settings(), "up", START, END) is None


def test_grafana_link_with_a_plain_query_parameter() -> None:
    s = settings(grafana_explore_url_template="https://grafana.example/explore?expr={expr}&from={start_ms}"
                                              "&to={end_ms}")
    params = parse_qs(urlsplit(grafana_explore_url(s, EXPR, START, END)).query)
    assert params == {"expr": [EXPR], "from": [str(int(START * 1000))], "to": [str(int(START * 1000) + 600_250)]}


def test_grafana_link_inside_url_encoded_json_stays_valid_json() -> None:
    left = quote('{"datasource":"prom","queries":[{"refId":"A","expr":"', safe="") + "{expr}" + quote(
        '"}],"range":{"from":"', safe="") + "{start_ms}" + quote('","to":"', safe="") + "{end_ms}" + quote(
        '"}}', safe="")
    s = settings(grafana_explore_url_template=f"https://grafana.example/explore?orgId=1&left={left}")
    params = parse_qs(urlsplit(grafana_explore_url(s, EXPR, START, END)).query)
    pane = json.loads(params["left"][0])
    assert pane["queries"][0]["expr"] == EXPR
    assert pane["range"] == {"from": str(int(START * 1000)), "to": str(int(START * 1000) + 600_250)}
    assert grafana_explore_url(settings(), EXPR, START, END) is None


@pytest.mark.parametrize(("kw", "expected"), [
    ({"public_url": "https://llmslo.example.com/"}, "https://llmslo.example.com/api/traces/{id}"),
    ({"host": "127.0.0.1", "port": 8099}, "http://127.0.0.1:8099/api/traces/{id}"),
    ({"trace_backend": "jaeger", "jaeger_url": "http://jaeger:16686/"}, "http://jaeger:16686/trace/{id}"),
    ({"trace_backend": "tempo", "tempo_url": "http://tempo:3200"}, None),
    ({"trace_backend": "tempo", "tempo_url": "http://tempo:3200",
      "trace_url_template": "https://grafana.example/explore?traceId={trace_id}"},
     "https://grafana.example/explore?traceId={id}"),
])
def test_trace_url(kw: dict[str, Any], expected: str | None) -> None:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_url(settings(**kw), tid) == (expected.replace("{id}", tid) if expected else None)


def test_trace_url_encodes_the_id() -> None:
    assert trace_url(settings(public_url="https://x.example"), "a/b?c") == "https://x.example/api/traces/a%2Fb%3Fc"


def test_incident_links_gather_everything_once_in_reading_order() -> None:
    s = settings(public_url="https://llmslo.example.com")
    rule = "http://prom:9090/graph?g0.expr=llm_slo%3Aerrors%3Aburn_rate1h+%3E+14.4&g0.tab=1"
    incident = {
        "id": "inc 1/2",
        "alerts": [
            {"labels": {"alertname": "LLMErrorBurn", "severity": "page"}, "generatorURL": rule},
            {"labels": {"alertname": "LLMErrorBurn", "severity": "page", "pod": "b"}, "generatorURL": rule},
            {"labels": {"alertname": "LLMErrorBurn", "severity": "ticket"}, "generatorURL": rule + "&x=1"},
            {"labels": {"alertname": "Evil"}, "generatorURL": "javascript:alert(1)"},
            {"labels": {"alertname": "NoUrl"}},
        ],
    }
    prom = {"queries": [
        {"name": "burn_rate_long", "title": "Burn rate", "link": "http://prom:9090/graph?g0.expr=a",
         "grafana_link": "https://grafana.example/explore?expr=a"},
        {"name": "regional", "title": "By region", "link": None, "grafana_link": None},
    ]}
    traces = {"exemplars": [
        {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "url": "https://x/t/4bf9", "why": "slowest llm span"},
        {"trace_id": "00000000000000000000000000000001", "url": None, "why": "tempo, no UI"},
    ]}
    runbooks = [Runbook("Error burn", "https://runbooks.example.com/llm/error-burn"),
                {"title": "Provider limits", "url": "https://runbooks.example.com/llm/provider-latency"}]
    got = incident_links(s, incident, prom, traces, runbooks)
    assert got == [
        {"title": "Alert rule: LLMErrorBurn (page)", "url": rule, "kind": "alert"},
        {"title": "Alert rule: LLMErrorBurn (ticket)", "url": rule + "&x=1", "kind": "alert"},
        {"title": "Prometheus: Burn rate", "url": "http://prom:9090/graph?g0.expr=a", "kind": "prometheus"},
        {"title": "Grafana: Burn rate", "url": "https://grafana.example/explore?expr=a", "kind": "grafana"},
        {"title": "Trace 4bf92f3577b34da6: slowest llm span", "url": "https://x/t/4bf9", "kind": "trace"},
        {"title": "Runbook: Error burn", "url": "https://runbooks.example.com/llm/error-burn", "kind": "runbook"},
        {"title": "Runbook: Provider limits", "url": "https://runbooks.example.com/llm/provider-latency",
         "kind": "runbook"},
        {"title": "Incident page", "url": "https://llmslo.example.com/incidents/inc%201%2F2", "kind": "incident"},
    ]


def test_incident_links_without_evidence() -> None:
    got = incident_links(settings(), {"id": "abc", "alerts": []}, None, None, [])
    assert got == [{"title": "Incident page", "url": "http://127.0.0.1:8080/incidents/abc", "kind": "incident"}]
