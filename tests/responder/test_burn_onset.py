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
import time
from pathlib import Path

import pytest

from capture.probes import CATALOG
from responder import config
from responder.evidence.prometheus import burn_onset
from responder.playbooks import load_playbooks
from tests.responder.prom_fixtures import scraping
from tests.responder.test_prometheus import SERVICE, Traffic

pytestmark = pytest.mark.needs_prometheus

REPO = Path(__file__).resolve().parents[2]
TICK_S = 0.05
PHASE_S = 8.0
HEALTHY = {"ok_per_s": 20.0, "err_per_s": 0.0, "ttft_s": 0.2}
SLOW = {"ok_per_s": 20.0, "err_per_s": 0.0, "ttft_s": 1.5}
FAILING = {"ok_per_s": 10.0, "err_per_s": 10.0, "ttft_s": 1.5}


LABELS = {"alertname": "LLMErrorBurn", "severity": "page", "slo": "errors", "long_window": "1h",
          "short_window": "5m", "service": SERVICE}


@pytest.fixture(scope="module")
def phases(tmp_path_factory: pytest.TempPathFactory):
    traffic = Traffic()  # errors are counted as 503s: not the 429s of its own incident phase
    traffic.phase = HEALTHY
    with scraping(tmp_path_factory.mktemp("prom"), traffic) as prom:
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
