"""Prometheus evidence against a real Prometheus scraping a real metrics endpoint.

The module fixture serves prometheus_client metrics, starts ``prometheus`` (scrape and rule
evaluation every second, recording rules named as the contract names them, over short ranges)
and plays a baseline then an "incident" with three times the traffic and twenty times the error
ratio. Failure modes go through a small aiohttp stand-in in front of that Prometheus (503s, a
hang, counting requests) or a closed port.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.net import free_port
from responder import config
from responder.evidence.prometheus import MAX_POINTS, MAX_SERIES, prometheus_evidence
from responder.playbooks import PromQuery, load_playbooks, select_playbook
from tests.responder.prom_fixtures import scraping
from tests.standins.loopback import LoopbackServer

pytestmark = pytest.mark.needs_prometheus

SERVICE = "chat"
TICK_S = 0.05
PHASE_S = 10.0
# rate() windows in the rules are 4s; a window starting this long into a phase sees only that phase.
SETTLE_S = 5.0
BASELINE = {"ok_per_s": 19.8, "err_per_s": 0.2, "ttft_s": 0.2}  # 20 req/s, 1% errors
INCIDENT = {"ok_per_s": 48.0, "err_per_s": 12.0, "ttft_s": 1.5}  # 60 req/s, 20% errors (429)



@dataclass
class Lab:
    prom_url: str
    baseline: tuple[float, float]
    incident: tuple[float, float]


class Traffic:
    """Moves the service's metrics on a background thread at the current phase's rates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("llm_requests", "requests", ["service", "code"], registry=self.registry)
        self.ttft = Histogram("llm_time_to_first_token_seconds", "ttft", ["service"], registry=self.registry,
                              buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0))
        self.duration = Histogram("llm_request_duration_seconds", "e2e", ["service"], registry=self.registry,
                                  buckets=(0.5, 1.0, 2.0, 5.0, 10.0))
        # Eight series for the series cap, and a counter that never moves for 0/0 and 1/0.
        self.depth = Gauge("lab_queue_depth", "queue depth", ["shard"], registry=self.registry)
        for shard in range(8):
            self.depth.labels(str(shard)).set(shard)
        self.idle = Counter("lab_idle", "never incremented", registry=self.registry)
        self.phase = BASELINE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            p = self.phase
            self.requests.labels(SERVICE, "200").inc(p["ok_per_s"] * TICK_S)
            self.requests.labels(SERVICE, "429" if p is INCIDENT else "503").inc(p["err_per_s"] * TICK_S)
            self.ttft.labels(SERVICE).observe(p["ttft_s"])
            self.duration.labels(SERVICE).observe(p["ttft_s"] + 1.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    traffic = Traffic()
    # Both labels exist from the start so the error ratio is defined in both phases.
    traffic.requests.labels(SERVICE, "429")
    with scraping(tmp_path_factory.mktemp("prom"), traffic) as prom:
        b0 = time.time()
        time.sleep(PHASE_S)
        traffic.phase = INCIDENT
        i0 = time.time()
        time.sleep(PHASE_S)
        i1 = time.time()
        # The last scrape and rule evaluation inside the incident window have to land first.
        time.sleep(2.5)
        yield Lab(prom.url, (b0 + SETTLE_S, i0), (i0 + SETTLE_S, i1))


def settings(url: str, **kw: Any) -> config.Settings:
    return config.load(env={}, prometheus_url=url, **kw)


LABELS = {"alertname": "LLMErrorBurn", "severity": "page", "slo": "errors", "long_window": "1h",
          "short_window": "5m", "service": SERVICE}
REQUEST_RATE = PromQuery("request_rate", "Requests per second",
                         'sum(rate(llm_requests_total{service="$service"}[4s]))', "req/s", "signal")
BURN_LONG = PromQuery("burn_rate_long", "Burn rate, long window",
                      'llm_slo:$slo:burn_rate$long_window{service="$service"}', "x", "burn_rate")


def query(evidence: dict, name: str) -> dict:
    return next(q for q in evidence["queries"] if q["name"] == name)


# --- a healthy Prometheus ---------------------------------------------------------------------

async def test_evidence_numbers_follow_the_incident(lab: Lab) -> None:
    s = settings(lab.prom_url, grafana_explore_url_template="https://grafana.example/explore?q={expr}"
                                                            "&from={start_ms}&to={end_ms}")
    ev = await prometheus_evidence(s, [REQUEST_RATE, BURN_LONG], LABELS, lab.baseline, lab.incident)
    assert ev is not None and ev["reachable"] is True and ev["error"] is None and ev["attempts"] == 1
    assert ev["baseline"] == {"start": lab.baseline[0], "end": lab.baseline[1]}
    assert ev["incident"] == {"start": lab.incident[0], "end": lab.incident[1]}

    rate = query(ev, "request_rate")
    assert rate["error"] is None and rate["unit"] == "req/s" and rate["kind"] == "signal"
    assert rate["expr"] == 'sum(rate(llm_requests_total{service="chat"}[4s]))'
    assert 15 < rate["baseline"]["mean"] < 25, rate["baseline"]
    assert 50 < rate["incident"]["mean"] < 70, rate["incident"]
    assert 2.2 < rate["incident"]["mean"] / rate["baseline"]["mean"] < 4.0
    for window in ("baseline", "incident"):
        assert rate[window]["max"] >= rate[window]["mean"]

    burn = query(ev, "burn_rate_long")
    assert burn["expr"] == 'llm_slo:errors:burn_rate1h{service="chat"}'
    assert 0.5 < burn["baseline"]["mean"] < 2.0, burn["baseline"]  # 1% errors / 1% budget
    assert 14 < burn["incident"]["mean"] < 26, burn["incident"]  # 20% / 1%
    assert burn["incident"]["max"] >= 14

    # One series over baseline.start .. incident.end at the default step (1s for ~20s).
    (series,) = burn["series"]
    assert series["labels"]["service"] == SERVICE and series["labels"]["__name__"] == "llm_slo:errors:burn_rate1h"
    ts = [t for t, _ in series["points"]]
    assert ts == sorted(ts) and len(ts) <= MAX_POINTS
    assert math.floor(lab.baseline[0]) <= ts[0] <= lab.baseline[0] + 2
    assert lab.incident[1] - 2 <= ts[-1] <= math.ceil(lab.incident[1])
    assert all(b - a == pytest.approx(1.0) for a, b in zip(ts, ts[1:]))

    grafana = parse_qs(urlsplit(burn["grafana_link"]).query)
    assert grafana["q"] == [burn["expr"]]
    assert int(grafana["from"][0]) == math.floor(lab.baseline[0] * 1000)
    assert int(grafana["to"][0]) == math.ceil(lab.incident[1] * 1000)


async def test_graph_links_open_and_carry_the_query(lab: Lab) -> None:
    ev = await prometheus_evidence(settings(lab.prom_url), [REQUEST_RATE, BURN_LONG], LABELS, lab.baseline,
                                   lab.incident)
    async with aiohttp.ClientSession() as http:
        for q in ev["queries"]:
            assert q["link"].startswith(f"{lab.prom_url}/graph?")
            async with http.get(q["link"]) as resp:  # follows /graph -> the UI's page
                assert resp.status == 200, q["link"]
            params = parse_qs(urlsplit(q["link"]).query)
            assert params["g0.expr"] == [q["expr"]]
            assert params["g0.tab"] == ["0"]
            assert params["g0.range_input"] == [f"{math.ceil(lab.incident[1]) - math.floor(lab.baseline[0])}s"]
            # The expression in the link is the one Prometheus ran: asking again gives data.
            async with http.get(f"{lab.prom_url}/api/v1/query",
                                params={"query": params["g0.expr"][0], "time": str(lab.incident[1])}) as resp:
                body = await resp.json()
            assert body["status"] == "success" and body["data"]["result"], body


async def test_public_url_is_used_for_links_but_not_for_queries(lab: Lab) -> None:
    s = settings(lab.prom_url, prometheus_public_url="https://prometheus.example.com/")
    ev = await prometheus_evidence(s, [REQUEST_RATE], LABELS, lab.baseline, lab.incident)
    assert ev["reachable"] and query(ev, "request_rate")["baseline"]["mean"] > 0
    assert query(ev, "request_rate")["link"].startswith("https://prometheus.example.com/graph?g0.expr=")


@pytest.mark.parametrize(("alert", "slo"), [("LLMErrorBurn", "errors"), ("LLMTTFTBurn", "ttft")])
async def test_shipped_playbook_queries_run_against_the_contract_rules(lab: Lab, alert: str, slo: str) -> None:
    from capture.probes import CATALOG

    playbooks = load_playbooks(Path(__file__).resolve().parents[2] / "playbooks", set(CATALOG))
    labels = {**LABELS, "alertname": alert, "slo": slo}
    playbook = select_playbook(playbooks, labels)
    ev = await prometheus_evidence(settings(lab.prom_url), playbook.prometheus.queries, labels, lab.baseline,
                                   lab.incident, playbook.prometheus.step_s)
    assert ev["reachable"] and ev["error"] is None
    for q in ev["queries"]:
        assert q["error"] is None and q["series"], q
        assert "$" not in q["expr"]
    for name in ("burn_rate_long", "burn_rate_short"):
        burn = query(ev, name)
        assert burn["incident"]["mean"] > 5 * burn["baseline"]["mean"], burn
    rate = query(ev, "request_rate")  # [5m] in the playbook: still rising, less sharply
    assert rate["incident"]["mean"] > rate["baseline"]["mean"]


async def test_series_and_points_are_capped(lab: Lab) -> None:
    q = PromQuery("depth", "Queue depth", "lab_queue_depth", "", "signal")
    # A 0.05s step over ~20s asks for ~400 points per series.
    ev = await prometheus_evidence(settings(lab.prom_url), [q], {}, lab.baseline, lab.incident, step=0.05)
    depth = query(ev, "depth")
    assert len(depth["series"]) == MAX_SERIES
    assert [s["labels"]["shard"] for s in depth["series"]] == ["7", "6", "5", "4", "3"]
    assert depth["note"] == "showing 5 of 8 series, highest incident mean first"
    # The window statistics cover every series, not only those kept for the chart.
    assert depth["incident"] == {"mean": pytest.approx(3.5), "max": 7.0}
    for s in depth["series"]:
        ts = [t for t, _ in s["points"]]
        assert len(ts) == MAX_POINTS and ts == sorted(ts) and len(set(ts)) == MAX_POINTS
        # The client asks from and to whole seconds; the first and last points survive downsampling.
        assert ts[0] == round(lab.baseline[0]) and round(lab.incident[1]) - 0.05 <= ts[-1] <= round(lab.incident[1])


async def test_nan_and_inf_points_are_dropped_and_counted(lab: Lab) -> None:
    nan = PromQuery("idle_ratio", "0/0", "rate(lab_idle_total[4s]) / rate(lab_idle_total[4s])", "", "signal")
    inf = PromQuery("idle_inverse", "1/0", "1 / rate(lab_idle_total[4s])", "", "signal")
    ev = await prometheus_evidence(settings(lab.prom_url), [nan, inf], {}, lab.baseline, lab.incident)
    for name in ("idle_ratio", "idle_inverse"):
        q = query(ev, name)
        assert q["error"] is None and q["series"] == []
        assert q["baseline"] == {"mean": None, "max": None} and q["incident"] == {"mean": None, "max": None}
        dropped = int(q["note"].split()[0])
        assert q["note"] == f"{dropped} NaN/Inf points dropped"
        assert dropped >= math.floor(lab.incident[1] - lab.baseline[0])


async def test_query_with_a_missing_label_is_skipped_with_a_note(lab: Lab) -> None:
    regional = PromQuery("regional", "By region", 'sum(rate(llm_requests_total{region="$region"}[4s]))', "", "signal")
    ev = await prometheus_evidence(settings(lab.prom_url), [regional, REQUEST_RATE], LABELS, lab.baseline,
                                   lab.incident)
    assert ev["reachable"] and ev["error"] is None
    skipped = query(ev, "regional")
    assert skipped["error"] is None and skipped["series"] == [] and skipped["link"] is None
    assert skipped["note"] == "skipped: the alert has no 'region' label for this query"
    assert skipped["expr"] == regional.expr
    assert query(ev, "request_rate")["incident"]["mean"] > 0


@pytest.mark.parametrize("hostile", ['chat"} or vector(1) #', 'chat\\', 'chat"}\nor vector(1)'])
async def test_hostile_label_values_stay_inside_their_string(lab: Lab, hostile: str) -> None:
    # Had the value left its string, "or vector(1)" would add a series; Prometheus's own parser
    # reads it as one (unmatched) service name instead.
    ev = await prometheus_evidence(settings(lab.prom_url), [REQUEST_RATE], {"service": hostile}, lab.baseline,
                                   lab.incident)
    rate = query(ev, "request_rate")
    assert rate["error"] is None, rate["error"]
    assert rate["series"] == [] and rate["note"].startswith("no data")


async def test_only_skipped_queries_means_prometheus_was_not_asked(lab: Lab) -> None:
    ev = await prometheus_evidence(settings(lab.prom_url), [BURN_LONG], {"alertname": "X"}, lab.baseline,
                                   lab.incident)
    assert ev["reachable"] is False and ev["attempts"] == 0 and "not asked" in ev["error"]


async def test_no_prometheus_url_or_no_queries_means_no_evidence(lab: Lab) -> None:
    assert await prometheus_evidence(config.load(env={}), [REQUEST_RATE], LABELS, lab.baseline, lab.incident) is None
    assert await prometheus_evidence(settings(lab.prom_url), [], LABELS, lab.baseline, lab.incident) is None


# --- failure modes ----------------------------------------------------------------------------

class PrometheusStandin(LoopbackServer):
    """An aiohttp server in front of the real Prometheus: counts query_range requests per query,
    answers the first ``fail_first`` with ``fail_status``, or hangs until stopped when ``hang``."""

    def __init__(self, upstream: str, fail_first: int = 0, fail_status: int = 503, hang: bool = False) -> None:
        self.upstream = upstream
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.hang = hang
        self.seen: list[str] = []
        self._release = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.query.get("query", ""))
        if self.hang:
            await self._release.wait()
            return web.Response(status=503)
        if len(self.seen) <= self.fail_first:
            return web.json_response({"status": "error", "errorType": "unavailable",
                                      "error": "stand-in: try again"}, status=self.fail_status)
        assert self._http is not None
        async with self._http.get(f"{self.upstream}{request.path_qs}") as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/v1/query_range", self.handle)
        return app

    async def start(self) -> str:
        self._http = aiohttp.ClientSession()
        return await super().start()

    async def stop(self) -> None:
        self._release.set()
        await super().stop()
        if self._http is not None:
            await self._http.close()


async def test_closed_port_is_unreachable_after_every_attempt(lab: Lab) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    s = settings(url, prometheus_attempts=3, prometheus_timeout_s=2)
    started = time.monotonic()
    ev = await prometheus_evidence(s, [REQUEST_RATE, BURN_LONG], LABELS, lab.baseline, lab.incident)
    assert time.monotonic() - started < 10
    assert ev["reachable"] is False and ev["attempts"] == s.prometheus_attempts == 3
    assert ev["error"] == (f"Prometheus at {url} could not be queried: 3 attempts per query, "
                           "last error: Connection refused")
    for q in ev["queries"]:
        assert q["error"] == "Connection refused" and q["series"] == [] and q["incident"]["mean"] is None
        assert q["link"].startswith(f"{url}/graph?")  # still useful once Prometheus is back


async def test_503_twice_then_the_real_answer(lab: Lab) -> None:
    direct = await prometheus_evidence(settings(lab.prom_url), [BURN_LONG], LABELS, lab.baseline, lab.incident)
    async with PrometheusStandin(lab.prom_url, fail_first=2) as standin:
        ev = await prometheus_evidence(settings(standin.url, prometheus_attempts=3), [BURN_LONG], LABELS,
                                       lab.baseline, lab.incident)
    assert len(standin.seen) == 3 and ev["attempts"] == 3
    assert ev["reachable"] is True and ev["error"] is None
    burn = query(ev, "burn_rate_long")
    assert burn["error"] is None
    assert burn["incident"] == query(direct, "burn_rate_long")["incident"]
    assert burn["series"] == query(direct, "burn_rate_long")["series"]


async def test_503_on_every_attempt_is_unreachable_with_the_status(lab: Lab) -> None:
    async with PrometheusStandin(lab.prom_url, fail_first=100) as standin:
        ev = await prometheus_evidence(settings(standin.url, prometheus_attempts=2), [BURN_LONG], LABELS,
                                       lab.baseline, lab.incident)
    assert len(standin.seen) == 2 and ev["attempts"] == 2 and ev["reachable"] is False
    assert ev["error"].endswith("last error: HTTP 503: unavailable: stand-in: try again")


async def test_hanging_prometheus_is_bounded_by_the_timeout(lab: Lab) -> None:
    async with PrometheusStandin(lab.prom_url, hang=True) as standin:
        s = settings(standin.url, prometheus_attempts=2, prometheus_timeout_s=0.5)
        started = time.monotonic()
        ev = await prometheus_evidence(s, [REQUEST_RATE, BURN_LONG], LABELS, lab.baseline, lab.incident)
        elapsed = time.monotonic() - started
    # Two 0.5s timeouts and one backoff (at most 0.5s), the two queries side by side.
    assert 1.0 <= elapsed < 3.0, elapsed
    assert len(standin.seen) == 4
    assert ev["reachable"] is False and ev["attempts"] == 2
    assert ev["error"].endswith("last error: no answer within 0.5s (timed out)")


async def test_bad_promql_fails_that_query_once_and_the_others_run(lab: Lab) -> None:
    bad = PromQuery("broken", "Broken", 'sum(rate(llm_requests_total{service="$service"}[4s])', "", "signal")
    async with PrometheusStandin(lab.prom_url) as standin:
        ev = await prometheus_evidence(settings(standin.url, prometheus_attempts=3), [bad, REQUEST_RATE], LABELS,
                                       lab.baseline, lab.incident)
    broken = query(ev, "broken")
    assert standin.seen.count(broken["expr"]) == 1  # a 400 is the playbook's fault: not retried
    assert broken["error"].startswith("Prometheus rejected the query (HTTP 400: bad_data: ")
    assert "parse error" in broken["error"] and broken["series"] == []
    assert ev["reachable"] is True and ev["error"] is None and ev["attempts"] == 1
    assert query(ev, "request_rate")["error"] is None and query(ev, "request_rate")["incident"]["mean"] > 40
