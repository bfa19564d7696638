"""Where the burn began, read from a real Prometheus: a fault that slows every answer first and
fails them only later burns the latency objective before the error one, and the baseline of an
error-budget alert must end before the first.

A metrics endpoint plays three phases (healthy; slow first tokens; slow and failing), Prometheus
scrapes it and evaluates burn-rate rules with the contract's names over 4 s ranges, and
``burn_onset`` runs with the shipped error-burn playbook's queries.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from capture.probes import CATALOG

from responder import config
from responder.evidence.prometheus import burn_onset
from responder.playbooks import load_playbooks
from tests.responder.prom_fixtures import serve_metrics, start_prometheus, wait_for

pytestmark = pytest.mark.needs_prometheus

REPO = Path(__file__).resolve().parents[2]
SERVICE = "chat"
TICK_S = 0.05
PHASE_S = 8.0
HEALTHY = {"ok_per_s": 20.0, "err_per_s": 0.0, "ttft_s": 0.2}
SLOW = {"ok_per_s": 20.0, "err_per_s": 0.0, "ttft_s": 1.5}
FAILING = {"ok_per_s": 10.0, "err_per_s": 10.0, "ttft_s": 1.5}

RULES = """\
groups:
  - name: llm-slo-test
    interval: 1s
    rules:
""" + "".join(f"""\
      - record: llm_slo:errors:ratio_rate{w}
        expr: >-
          sum by (service) (rate(llm_requests_total{{code=~"5.."}}[4s]))
          / sum by (service) (rate(llm_requests_total[4s]))
      - record: llm_slo:errors:burn_rate{w}
        expr: llm_slo:errors:ratio_rate{w} / (1 - 0.99)
      - record: llm_slo:ttft:ratio_rate{w}
        expr: >-
          1 - sum by (service) (rate(llm_time_to_first_token_seconds_bucket{{le="0.5"}}[4s]))
          / sum by (service) (rate(llm_time_to_first_token_seconds_count[4s]))
      - record: llm_slo:ttft:burn_rate{w}
        expr: llm_slo:ttft:ratio_rate{w} / (1 - 0.99)
""" for w in ("5m", "1h"))

LABELS = {"alertname": "LLMErrorBurn", "severity": "page", "slo": "errors", "long_window": "1h",
          "short_window": "5m", "service": SERVICE}


class Traffic:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("llm_requests", "requests", ["service", "code"], registry=self.registry)
        self.ttft = Histogram("llm_time_to_first_token_seconds", "ttft", ["service"], registry=self.registry,
                              buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0))
        self.requests.labels(SERVICE, "200")
        self.requests.labels(SERVICE, "503")
        self.phase = HEALTHY
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            p = self.phase
            self.requests.labels(SERVICE, "200").inc(p["ok_per_s"] * TICK_S)
            self.requests.labels(SERVICE, "503").inc(p["err_per_s"] * TICK_S)
            self.ttft.labels(SERVICE).observe(p["ttft_s"])


@pytest.fixture(scope="module")
def phases(tmp_path_factory: pytest.TempPathFactory):
    traffic = Traffic()
    metrics_url, stop_metrics = serve_metrics(traffic.registry)
    prom = start_prometheus(
        tmp_path_factory.mktemp("prom"),
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: lab\n    static_configs: [{{targets: ['{urlsplit(metrics_url).netloc}']}}]\n",
        {"slo.yml": RULES})
    try:
        traffic._thread.start()
        wait_for(lambda: prom.query("llm_requests_total"), 20, what="first scrape")
        time.sleep(PHASE_S)
        traffic.phase = SLOW
        slow_at = time.time()
        time.sleep(PHASE_S)
        traffic.phase = FAILING
        failing_at = time.time()
        time.sleep(PHASE_S)
        alert_at = time.time()
        time.sleep(2.5)  # the last scrape and rule evaluation land
        yield prom.url, slow_at, failing_at, alert_at
    finally:
        traffic._stop.set()
        traffic._thread.join(timeout=5)
        prom.stop()
        stop_metrics()


def queries(kinds: tuple[str, ...]):
    book = next(b for b in load_playbooks(REPO / "playbooks", set(CATALOG)) if b.name == "llm-error-burn")
    return [q for q in book.prometheus.queries if q.kind in kinds]


def test_the_baseline_ends_before_the_first_objective_burned(phases) -> None:
    url, slow_at, failing_at, alert_at = phases
    settings = config.load(env={}, prometheus_url=url)
    assert [q.name for q in queries(("onset",))] == ["burn_rate_any_objective"]
    own = asyncio.run(burn_onset(settings, queries(("burn_rate",)), LABELS, alert_at))
    both = asyncio.run(burn_onset(settings, queries(("burn_rate", "onset")), LABELS, alert_at))
    # The error objective alone dates the burn at the failures; every objective, at the slow answers.
    assert own is not None and failing_at - 2 <= own <= failing_at + 6, (own - failing_at)
    assert both is not None and slow_at - 2 <= both <= slow_at + 6, (both - slow_at)


def test_an_onset_query_that_fails_leaves_the_own_objective_to_decide(phases) -> None:
    url, _slow_at, failing_at, alert_at = phases
    settings = config.load(env={}, prometheus_url=url)
    broken = [dataclasses.replace(q, expr="max(this is not promql") for q in queries(("onset",))]
    onset = asyncio.run(burn_onset(settings, queries(("burn_rate",)) + broken, LABELS, alert_at))
    assert onset is not None and failing_at - 2 <= onset <= failing_at + 6
