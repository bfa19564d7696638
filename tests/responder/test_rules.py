"""The generated SLO rules, checked by the real Prometheus tools: ``promtool check rules``,
``promtool test rules`` on synthetic series (at full scale and scaled down), a real
``prometheus`` process scraping a real metrics endpoint, and the ``llmslo rules generate`` CLI.

The promtool scenarios use whole-minute steps and evaluation times on sample timestamps, so every
``rate()`` window begins and ends on a sample and Prometheus does not extrapolate: a burn rate is
exactly (bad increase / total increase) / (1 - objective), which ``burn`` below computes, and the
annotations can be checked to the digit.
"""
from __future__ import annotations

import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram

from responder.slo.rules import (
    ALERT_NAMES,
    RECOMMENDED_LATENCY_BUCKETS,
    RECOMMENDED_TTFT_BUCKETS,
    WINDOWS,
    SloRulesSpec,
    format_duration,
    recording_rule_name,
    render_rules,
)
from tests.responder.prom_fixtures import serve_metrics, start_prometheus, wait_for
from tests.responder.test_cli import assert_usage_error as usage_error
from tests.responder.test_cli import run

NOMINAL_S = dict(WINDOWS)


def assert_usage_error(p: subprocess.CompletedProcess, *words: str) -> None:
    usage_error(p, *words)
    assert p.stderr.startswith("llmslo: rules generate: "), p.stderr


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_rules_valid(path: Path) -> None:
    p = promtool("check", "rules", str(path), cwd=path.parent)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 40 rules found" in p.stdout, p.stdout  # 39 SLO rules, the early warning


# --- 1. promtool check rules ------------------------------------------------------------------

@pytest.mark.needs_prometheus
@pytest.mark.parametrize("extra", [[], ["--window-scale", "1/240", "--scrape-interval", "250ms"],
                                   ["--service-label", "app", "--group-by", "region,model", "--runbook-url",
                                    "https://runbooks.example.com/llm/{slo}?alert={alertname}&sev={severity}",
                                    "--ttft-threshold", "500ms", "--objective-errors", "99.9%"]],
                         ids=["default", "scale-1/240", "options"])
def test_generated_rules_pass_promtool_check(tmp_path, extra):
    out = tmp_path / "slo.rules.yml"
    p = run("rules", "generate", "--output", str(out), *extra)
    assert p.returncode == 0, p.stderr
    assert_rules_valid(out)


def test_rule_names_and_labels_follow_the_contract():
    doc = yaml.safe_load(render_rules(SloRulesSpec()))
    records = [r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r]
    expected = [f"llm_slo:{sli}:{kind}{w}" for sli in ("errors", "ttft", "latency")
                for kind in ("ratio_rate", "burn_rate") for w in ("5m", "30m", "1h", "6h", "3d")]
    assert sorted(records) == sorted(expected)
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r and "slo" in r["labels"]]
    got = {(a["alert"], a["labels"]["severity"], a["labels"]["slo"], a["labels"]["long_window"],
            a["labels"]["short_window"], a["for"]) for a in alerts}
    assert got == {(name, sev, sli, lw, sw, f) for sli, name in
                   (("errors", "LLMErrorBurn"), ("ttft", "LLMTTFTBurn"), ("latency", "LLMLatencyBurn"))
                   for sev, lw, sw, f in (("page", "1h", "5m", "2m"), ("page", "6h", "30m", "15m"),
                                          ("ticket", "3d", "6h", "1h"))}
    assert all("runbook_url" not in a["annotations"] for a in alerts)


def test_the_early_warning_alert_keeps_the_workload_and_the_domain():
    groups = yaml.safe_load(render_rules(SloRulesSpec()))["groups"]
    assert groups[-1]["name"] == "llm-kernel-early-warning"
    [alert] = groups[-1]["rules"]
    assert alert["alert"] == "LLMKernelEarlyWarning" and "for" not in alert
    assert alert["labels"] == {"severity": "ticket", "early_warning": "kernel"}
    assert alert["expr"].startswith("max by (domain, signal, namespace, pod, ")
    assert alert["expr"].endswith("(llmslo_early_warning_began_at_seconds) > 0")
    assert alert["annotations"]["began_at"] == '{{ $value | printf "%.3f" }}'
    off = yaml.safe_load(render_rules(SloRulesSpec(early_warning=False)))["groups"]
    assert [g["name"] for g in off] == [g["name"] for g in groups[:-1]]


@pytest.mark.needs_prometheus
def test_the_early_warning_fires_while_an_agent_reports_it(tmp_path):
    """promtool: two agents' series for one pod (the same workload labels) make one alert with the
    pod, domain and signal, and when the trouble began (the later agent's); it is gone once the
    series drops to nothing."""
    (tmp_path / "rules.yml").write_text(render_rules(SloRulesSpec()))
    series = ('llmslo_early_warning_began_at_seconds{{instance="{i}",domain="network",signal="tcp_retrans.retransmits_per_s",'
              'namespace="shop",pod="chat-1",workload_kind="Deployment",workload="chat",pod_uid="u1",container_id="",'
              'cgroup=""}}')
    labels = {"severity": "ticket", "early_warning": "kernel", "domain": "network",
              "signal": "tcp_retrans.retransmits_per_s", "namespace": "shop", "pod": "chat-1",
              "workload_kind": "Deployment", "workload": "chat", "pod_uid": "u1"}
    doc = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [{"series": series.format(i="a:8081"),
                          "values": "1796450000 1796450000 1796450000 1796450000 _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _"},
                         {"series": series.format(i="b:8081"), "values": "1796449990 1796449990 _ _ _ _ _ _ _ _ _ _ _"}],
        "alert_rule_test": [
            {"eval_time": "30s", "alertname": "LLMKernelEarlyWarning", "exp_alerts": [{"exp_labels": labels, "exp_annotations": {
                "summary": "shop/chat-1: the kernel sees network trouble (tcp_retrans.retransmits_per_s)",
                "description": yaml.safe_load(render_rules(SloRulesSpec()))["groups"][-1]["rules"][0]["annotations"]
                ["description"].replace("{{ $labels.domain }}", "network"), "began_at": "1796450000.000"}}]},
            {"eval_time": "6m", "alertname": "LLMKernelEarlyWarning", "exp_alerts": []},
        ]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    p = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_scale_shrinks_ranges_and_for_but_keeps_names():
    spec = SloRulesSpec(window_scale=1 / 240, scrape_interval_s=0.25)
    text = render_rules(spec)
    assert [spec.range(w) for w, _ in WINDOWS] == ["1s250ms", "7s500ms", "15s", "1m30s", "18m"]
    assert "[1s250ms]" in text and "[5m]" not in text and "[3d]" not in text
    assert "llm_slo:errors:burn_rate5m" in text and "long_window: 1h" in text
    fors = [r["for"] for g in yaml.safe_load(text)["groups"] for r in g["rules"] if "for" in r]
    assert fors == ["500ms", "3s750ms", "15s"] * 3


def test_durations_render_as_prometheus_durations():
    assert [format_duration(s) for s in (259200, 3600, 75, 1.25, 0.5, 0)] == ["3d", "1h", "1m15s", "1s250ms",
                                                                                "500ms", "0s"]


# --- 2. promtool test rules -------------------------------------------------------------------

@dataclass
class Series:
    """A counter (or histogram bucket) built from per-minute increments, phase by phase."""

    labels: str
    phases: list[tuple[int, float]] = field(default_factory=list)  # (minutes, increase per minute)

    def value_at(self, minute: int) -> float:
        total, at = 0.0, 0
        for minutes, per_minute in self.phases:
            step = min(minutes, max(minute - at, 0))
            total += step * per_minute
            at += minutes
        return total

    def notation(self) -> str:
        """promtool's expanding notation: ``0`` then ``start+step x n`` per phase."""
        parts, value = ["0"], 0.0
        for minutes, per_minute in self.phases:
            parts.append(f"{value + per_minute:g}+{per_minute:g}x{minutes - 1}")
            value += minutes * per_minute
        return " ".join(parts)


def increase(series: Series, minute: int, window_min: int) -> float:
    return series.value_at(minute) - series.value_at(max(minute - window_min, 0))


def burn(bad: list[Series], total: list[Series], minute: int, window: str, objective: float) -> float:
    w = NOMINAL_S[window] // 60
    ratio = sum(increase(s, minute, w) for s in bad) / sum(increase(s, minute, w) for s in total)
    return ratio / (1 - objective)


@dataclass
class Scenario:
    """Series on a nominal one-minute grid, scaled in time by ``scale`` for promtool."""

    scale: float
    series: list[Series] = field(default_factory=list)

    def add(self, labels: str, *phases: tuple[int, float]) -> Series:
        s = Series(labels, list(phases))
        self.series.append(s)
        return s

    def at(self, minute: float) -> str:
        return format_duration(minute * 60 * self.scale)

    def test_group(self, alerts: list[dict], exprs: list[dict] = ()) -> dict:
        return {"interval": self.at(1),
                "input_series": [{"series": s.labels, "values": s.notation()} for s in self.series],
                "alert_rule_test": alerts, "promql_expr_test": list(exprs)}


def page_alert(name: str, sli: str, service: str, long_window: str, short_window: str, long_burn: float,
               short_burn: float, spec: SloRulesSpec, threshold_s: float | None = None) -> dict:
    """The alert promtool must see firing, annotations included (they carry both burn rates)."""
    factor = {"1h": "14.4", "6h": "6", "3d": "1"}[long_window]
    severity = "ticket" if long_window == "3d" else "page"
    title = {"errors": "error", "ttft": "time-to-first-token", "latency": "end-to-end latency"}[sli]
    what = title + (f" (slower than {format_duration(threshold_s)})" if threshold_s else "")
    objective = spec.objective(sli) * 100
    scaled = ""
    if spec.window_scale != 1:
        scaled = (f" Windows scaled by {spec.window_scale:g}: {long_window} is {spec.range(long_window)},"
                  f" {short_window} is {spec.range(short_window)}.")
    return {"exp_labels": {"alertname": name, "severity": severity, "slo": sli, "service": service,
                           "long_window": long_window, "short_window": short_window},
            "exp_annotations": {
                "summary": f"{service} is burning its {title} budget ({severity}: over {factor}x for "
                           f"{long_window} and {short_window})",
                "description": f"{what} burn rate {long_burn:.1f}x over {long_window} and {short_burn:.1f}x over "
                               f"{short_window} (threshold {factor}x; objective {objective:g}% over 30d).{scaled}"}}


def run_promtool_test(tmp_path: Path, spec: SloRulesSpec, groups: list[dict], evaluation_minutes: int = 1) -> None:
    (tmp_path / "rules.yml").write_text(render_rules(spec))
    scale = spec.window_scale
    doc = {"rule_files": ["rules.yml"], "evaluation_interval": format_duration(evaluation_minutes * 60 * scale),
           "tests": groups}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    p = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


SCALES = pytest.mark.parametrize("scale", [1.0, 1 / 60], ids=["scale-1", "scale-1/60"])


def spec_for(scale: float) -> SloRulesSpec:
    # At 1/60 the 5m window is 5s: a 1s scrape interval leaves 5 scrapes in it.
    return SloRulesSpec(window_scale=scale, scrape_interval_s=15 if scale == 1 else 1)


@pytest.mark.needs_prometheus
@SCALES
def test_error_burn_pages_in_time_counts_429_not_404_and_ignores_idle(tmp_path, scale):
    """6h healthy, then 20% bad (burn 40x): the 1h/5m page fires at the first evaluation 2m (for:)
    after the 1h burn passes 14.4x, i.e. 21.6 + 2 minutes into the burn. 500s and 429s count,
    404s do not, and a service without traffic records nothing and never alerts."""
    spec = spec_for(scale)
    sc = Scenario(scale)
    healthy, burn_min = 360, 60
    by_service = {}
    for service, code in (("chat-5xx", "500"), ("chat-429", "429"), ("chat-404", "404")):
        ok = sc.add(f'llm_requests_total{{service="{service}",code="200"}}', (healthy, 100), (burn_min, 80))
        bad = sc.add(f'llm_requests_total{{service="{service}",code="{code}"}}', (healthy, 0), (burn_min, 20))
        by_service[service] = ([bad], [ok, bad])
    sc.add('llm_requests_total{service="idle",code="200"}', (healthy + burn_min, 0))

    def burn_at(service: str, minute: int, window: str) -> float:
        return burn(*by_service[service], healthy + minute, window, 0.995)

    def fired(service: str, minute: int) -> dict:
        return page_alert("LLMErrorBurn", "errors", service, "1h", "5m", burn_at(service, minute, "1h"),
                          burn_at(service, minute, "5m"), spec)

    # The 1h burn crosses 14.4x at 22 min (14.67x; 14.0x at 21), so pending at 22 and 23, firing at 24.
    assert burn_at("chat-5xx", 22, "1h") > 14.4 > burn_at("chat-5xx", 21, "1h")
    alerts = [{"eval_time": sc.at(healthy + 23), "alertname": "LLMErrorBurn", "exp_alerts": []},
              {"eval_time": sc.at(healthy + 24), "alertname": "LLMErrorBurn",
               "exp_alerts": [fired("chat-5xx", 24), fired("chat-429", 24)]}]
    exprs = [
        {"eval_time": sc.at(healthy + 24), "expr": "round(1000 * llm_slo:errors:ratio_rate5m)",
         "exp_samples": [{"labels": f'{{service="{s}"}}', "value": v}
                         for s, v in (("chat-5xx", 200), ("chat-429", 200), ("chat-404", 0))]},
        {"eval_time": sc.at(healthy + 24), "expr": "round(10 * llm_slo:errors:burn_rate5m)",
         "exp_samples": [{"labels": f'{{service="{s}"}}', "value": v}
                         for s, v in (("chat-5xx", 400), ("chat-429", 400), ("chat-404", 0))]},
        # Zero traffic: no series at all for the idle service (not NaN), in any window.
        {"eval_time": sc.at(healthy + 24), "expr": 'count({__name__=~"llm_slo:.+", service="idle"})',
         "exp_samples": []},
    ]
    run_promtool_test(tmp_path, spec, [sc.test_group(alerts, exprs)])


@pytest.mark.needs_prometheus
@SCALES
def test_error_burn_below_page_factors_only_tickets(tmp_path, scale):
    """2.5% errors (burn 5x) stays under both page factors (14.4x and 6x) for hours; the ticket
    (1x over 3d and 6h) fires once 3d passes 1x at 91 min, plus its 1h for:."""
    spec = spec_for(scale)
    sc = Scenario(scale)
    healthy, burn_min = 360, 420
    ok = sc.add('llm_requests_total{service="chat",code="200"}', (healthy, 400), (burn_min, 390))
    bad = sc.add('llm_requests_total{service="chat",code="503"}', (healthy, 0), (burn_min, 10))

    def ticket(minute: int) -> dict:
        t = healthy + minute
        return page_alert("LLMErrorBurn", "errors", "chat", "3d", "6h", burn([bad], [ok, bad], t, "3d", 0.995),
                          burn([bad], [ok, bad], t, "6h", 0.995), spec)

    alerts = [{"eval_time": sc.at(healthy + 60), "alertname": "LLMErrorBurn", "exp_alerts": []},
              {"eval_time": sc.at(healthy + 145), "alertname": "LLMErrorBurn", "exp_alerts": []},
              {"eval_time": sc.at(healthy + 180), "alertname": "LLMErrorBurn", "exp_alerts": [ticket(180)]},
              {"eval_time": sc.at(healthy + 420), "alertname": "LLMErrorBurn", "exp_alerts": [ticket(420)]}]
    exprs = [{"eval_time": sc.at(healthy + 420), "expr": "round(10 * llm_slo:errors:burn_rate6h)",
              "exp_samples": [{"labels": '{service="chat"}', "value": 50}]}]
    run_promtool_test(tmp_path, spec, [sc.test_group(alerts, exprs)])


@pytest.mark.needs_prometheus
@SCALES
def test_slow_steady_burn_raises_a_ticket_after_enough_time(tmp_path, scale):
    """After 12h healthy, a steady 2x burn (1% errors): the 6h window passes 1x after 3h, the 3d
    window (holding the 12h of history) only after 12h; the ticket fires an hour (for:) later.
    Evaluated every 5 nominal minutes, so the condition is seen at 725 min and fires at 785."""
    spec = spec_for(scale)
    sc = Scenario(scale)
    healthy, burn_min = 720, 790
    ok = sc.add('llm_requests_total{service="chat",code="200"}', (healthy, 400), (burn_min, 396))
    bad = sc.add('llm_requests_total{service="chat",code="500"}', (healthy, 0), (burn_min, 4))
    t = healthy + 790
    fired = page_alert("LLMErrorBurn", "errors", "chat", "3d", "6h", burn([bad], [ok, bad], t, "3d", 0.995),
                       burn([bad], [ok, bad], t, "6h", 0.995), spec)
    alerts = [{"eval_time": sc.at(healthy + 300), "alertname": "LLMErrorBurn", "exp_alerts": []},
              {"eval_time": sc.at(healthy + 780), "alertname": "LLMErrorBurn", "exp_alerts": []},
              {"eval_time": sc.at(t), "alertname": "LLMErrorBurn", "exp_alerts": [fired]}]
    run_promtool_test(tmp_path, spec, [sc.test_group(alerts)], evaluation_minutes=5)


def histogram(sc: Scenario, metric: str, service: str, bounds: list[str], phases_fast_slow,
              slow_from: str) -> tuple[Series, Series]:
    """Buckets for a histogram whose observations are either fast (in the first bucket) or slow (in
    bucket ``slow_from`` and above); returns (the threshold bucket, count) for burn computations."""
    fast = [(m, f) for m, f, _ in phases_fast_slow]
    everything = [(m, f + s) for m, f, s in phases_fast_slow]
    created = {}
    slow_seen = False
    for b in bounds:
        slow_seen = slow_seen or b == slow_from
        created[b] = sc.add(f'{metric}_bucket{{service="{service}",le="{b}"}}', *(everything if slow_seen else fast))
    count = sc.add(f'{metric}_count{{service="{service}"}}', *everything)
    return created, count


@pytest.mark.needs_prometheus
@SCALES
def test_ttft_and_latency_shift_above_threshold_pages(tmp_path, scale):
    """TTFT: half the requests move from under 0.5s to under 5s (threshold 2s, objective 99%: burn
    50x) for a Python-instrumented service (le="2.0") and a Go one (le="2"): the page fires at
    18 + 2 minutes. Latency: 20% move above 10s (burn 20x): the page fires at 44 + 2 minutes."""
    spec = spec_for(scale)
    sc = Scenario(scale)
    healthy, burn_min = 360, 50
    phases_ttft = [(healthy, 100, 0), (burn_min, 50, 50)]
    ttft_thresholds = {}
    for service, bounds in (("py-chat", ["0.5", "1.0", "2.0", "5.0", "+Inf"]),
                            ("go-chat", ["0.5", "1", "2", "5", "+Inf"])):
        buckets, count = histogram(sc, "llm_time_to_first_token_seconds", service, bounds, phases_ttft,
                                   slow_from=bounds[3])
        ttft_thresholds[service] = (buckets[bounds[2]], count)
    lat_buckets, lat_count = histogram(sc, "llm_request_duration_seconds", "py-chat", ["1.0", "10.0", "30.0", "+Inf"],
                                       [(healthy, 100, 0), (burn_min, 80, 20)], slow_from="30.0")

    def slow_burn(threshold: Series, count: Series, minute: int, window: str) -> float:
        # bad = count - bucket(le=threshold); a Series of that difference per phase
        diff = Series("", [(m, c - b) for (m, c), (_, b) in zip(count.phases, threshold.phases)])
        return burn([diff], [count], healthy + minute, window, 0.99)

    def ttft_page(service: str, minute: int) -> dict:
        b, c = ttft_thresholds[service]
        return page_alert("LLMTTFTBurn", "ttft", service, "1h", "5m", slow_burn(b, c, minute, "1h"),
                          slow_burn(b, c, minute, "5m"), spec, threshold_s=2)

    lat_threshold = lat_buckets["10.0"]
    assert slow_burn(*ttft_thresholds["py-chat"], 18, "1h") > 14.4 > slow_burn(*ttft_thresholds["py-chat"], 17, "1h")
    assert slow_burn(lat_threshold, lat_count, 44, "1h") > 14.4 > slow_burn(lat_threshold, lat_count, 43, "1h")
    alerts = [
        {"eval_time": sc.at(healthy + 19), "alertname": "LLMTTFTBurn", "exp_alerts": []},
        {"eval_time": sc.at(healthy + 20), "alertname": "LLMTTFTBurn",
         "exp_alerts": [ttft_page("py-chat", 20), ttft_page("go-chat", 20)]},
        {"eval_time": sc.at(healthy + 45), "alertname": "LLMLatencyBurn", "exp_alerts": []},
        {"eval_time": sc.at(healthy + 46), "alertname": "LLMLatencyBurn", "exp_alerts": [
            page_alert("LLMLatencyBurn", "latency", "py-chat", "1h", "5m",
                       slow_burn(lat_threshold, lat_count, 46, "1h"), slow_burn(lat_threshold, lat_count, 46, "5m"),
                       spec, threshold_s=10)]},
        # Errors have no data here: no error series, so no error alert.
        {"eval_time": sc.at(healthy + 46), "alertname": "LLMErrorBurn", "exp_alerts": []},
    ]
    exprs = [{"eval_time": sc.at(healthy + 20), "expr": "round(100 * llm_slo:ttft:ratio_rate5m)",
              "exp_samples": [{"labels": '{service="go-chat"}', "value": 50},
                              {"labels": '{service="py-chat"}', "value": 50}]},
             {"eval_time": sc.at(healthy - 1), "expr": "llm_slo:latency:burn_rate1h",
              "exp_samples": [{"labels": 'llm_slo:latency:burn_rate1h{service="py-chat"}', "value": 0}]}]
    run_promtool_test(tmp_path, spec, [sc.test_group(alerts, exprs)])


@pytest.mark.needs_prometheus
@SCALES
def test_no_traffic_no_series_no_alerts(tmp_path, scale):
    """Counters and histograms that exist but never move: every ratio would be 0/0. Nothing is
    recorded (so nothing is NaN) and no alert is pending or firing."""
    spec = spec_for(scale)
    sc = Scenario(scale)
    sc.add('llm_requests_total{service="quiet",code="200"}', (120, 0))
    sc.add('llm_requests_total{service="quiet",code="500"}', (120, 0))
    for metric in ("llm_time_to_first_token_seconds", "llm_request_duration_seconds"):
        for le in ("2.0", "10.0", "+Inf"):
            sc.add(f'{metric}_bucket{{service="quiet",le="{le}"}}', (120, 0))
        sc.add(f'{metric}_count{{service="quiet"}}', (120, 0))
    alerts = [{"eval_time": sc.at(m), "alertname": name, "exp_alerts": []}
              for m in (10, 120) for name in ALERT_NAMES.values()]
    exprs = [{"eval_time": sc.at(m), "expr": 'count({__name__=~"llm_slo:.+"}) or count(ALERTS)', "exp_samples": []}
             for m in (10, 120)]
    run_promtool_test(tmp_path, spec, [sc.test_group(alerts, exprs)])


# --- 3. a real Prometheus ---------------------------------------------------------------------

HEALTHY_S = 30


class LabTraffic:
    """Requests as an instrumented LLM service would count them, recorded by a background thread
    at ~100/s; ``error_share`` switches it from healthy to failing (2/3 of failures 500, 1/3 429)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("llm_requests", "LLM requests by status code", ["service", "code"],
                                registry=self.registry)
        self.ttft = Histogram("llm_time_to_first_token_seconds", "time to first token", ["service"],
                              buckets=RECOMMENDED_TTFT_BUCKETS, registry=self.registry)
        self.duration = Histogram("llm_request_duration_seconds", "request duration", ["service"],
                                  buckets=RECOMMENDED_LATENCY_BUCKETS, registry=self.registry)
        self.service = service
        self.failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.01):
            i += 1
            code = "200"
            if self.failing and i % 10 < 3:  # 30%: two 500s and one 429 in every ten
                code = "429" if i % 10 == 2 else "500"
            self.requests.labels(self.service, code).inc()
            self.ttft.labels(self.service).observe(0.3)
            self.duration.labels(self.service).observe(1.5)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.mark.needs_prometheus
def test_rules_load_in_prometheus_and_error_burn_pages(tmp_path):
    """Scale 1/60 (5m is 5s, 1h is 60s), scrape and evaluate every second. All 40 rules (39 SLO, the early warning) load and
    evaluate healthy; the healthy service records an error ratio of 0 (present, not absent); once
    it returns 30% errors (burn 60x) the 1h/5m page goes pending and then firing.

    With HEALTHY_S of good traffic in the 60s window first, the 1h burn needs about 9.5s of errors
    to pass 14.4x (0.3 * t / (30 + t) > 14.4 * 0.005), then 2s of for:. The bounds below leave
    room for scrape and evaluation phase, and would catch an alert that fires on the first errors.
    """
    scale = 1 / 60
    spec = SloRulesSpec(window_scale=scale, scrape_interval_s=1)
    traffic = LabTraffic("lab-chat")
    metrics_url, stop_metrics = serve_metrics(traffic.registry)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "lab", "static_configs": [
                  {"targets": [urllib.parse.urlsplit(metrics_url).netloc]}]}]}
    prom = None
    traffic.start()
    traffic_started = time.monotonic()
    try:
        prom = start_prometheus(tmp_path, yaml.safe_dump(config), {"llm-slo.rules.yml": render_rules(spec)})

        def all_rules_healthy() -> list[dict]:
            rules = [r for g in prom.rule_groups() for r in g["rules"]]
            return rules if len(rules) == 40 and all(r["health"] == "ok" for r in rules) else []

        rules = wait_for(all_rules_healthy, 20, what="all 40 rules evaluated healthy")
        assert {r["name"] for r in rules} >= {recording_rule_name("errors", "burn_rate", "1h"), "LLMErrorBurn"}
        assert all(not r.get("lastError") for r in rules)

        healthy = wait_for(lambda: prom.query('llm_slo:errors:ratio_rate5m{service="lab-chat"}'), 20,
                           what="a recorded error ratio for lab-chat")
        assert float(healthy[0]["value"][1]) == 0.0
        time.sleep(max(0.0, HEALTHY_S - (time.monotonic() - traffic_started)))
        assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "LLMErrorBurn"]

        traffic.failing = True
        started = time.monotonic()

        def page(state: str) -> Callable[[], dict | None]:
            def check():
                for a in prom.alerts():
                    lab = a["labels"]
                    if (lab["alertname"], lab.get("severity"), lab.get("long_window"), lab.get("service")) == \
                            ("LLMErrorBurn", "page", "1h", "lab-chat") and a["state"] == state:
                        return a
                return None
            return check

        pending = wait_for(page("pending"), 30, interval_s=0.2, what="LLMErrorBurn page pending")
        pending_after = time.monotonic() - started
        firing = wait_for(page("firing"), 30, interval_s=0.2, what="LLMErrorBurn page firing")
        firing_after = time.monotonic() - started
        print(f"pending after {pending_after:.1f}s, firing after {firing_after:.1f}s")
        assert firing["labels"]["short_window"] == "5m" and firing["labels"]["slo"] == "errors"
        assert "x over 1h" in firing["annotations"]["description"]
        assert pending_after > 4, "paged on the first errors: the long window did not hold the healthy traffic"
        assert firing_after < 30
        assert pending["labels"] == firing["labels"]
    finally:
        traffic.stop()
        if prom is not None:
            prom.stop()
        stop_metrics()
    assert not any(p.name.startswith("prometheus") for p in tmp_path.iterdir())


# --- 4. the CLI -------------------------------------------------------------------------------

def test_cli_writes_file(tmp_path):
    out = tmp_path / "rules.yml"
    p = run("rules", "generate", "-o", str(out), "--window-scale", "0.5")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    doc = yaml.safe_load(out.read_text())
    assert [g["name"] for g in doc["groups"]] == ["llm-slo-errors", "llm-slo-ttft", "llm-slo-latency",
                                                  "llm-kernel-early-warning"]
    assert out.read_text().startswith("# LLM SLO rules generated by `llmslo rules generate`")
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_cli_prints_to_stdout_with_options():
    p = run("rules", "generate", "--ttft-threshold", "500ms", "--error-codes", "5..", "--requests-metric",
            "chat_requests_total", "--objective-latency", "0.995", "--runbook-url",
            "https://runbooks.example.com/{alertname}/{severity}")
    assert p.returncode == 0, p.stderr
    doc = yaml.safe_load(p.stdout)
    ttft = doc["groups"][1]["rules"][0]["expr"]
    assert 'le="0.5"' in ttft
    errors = doc["groups"][0]["rules"][0]["expr"]
    assert 'chat_requests_total{code=~"5.."}' in errors
    latency_burn = [r for r in doc["groups"][2]["rules"] if r.get("record") == "llm_slo:latency:burn_rate1h"][0]
    assert latency_burn["expr"] == "llm_slo:latency:ratio_rate1h / 0.005"
    urls = {r["annotations"]["runbook_url"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert urls == {f"https://runbooks.example.com/{a}/{s}" for a in ALERT_NAMES.values()
                    for s in ("page", "ticket")} | {"https://runbooks.example.com/LLMKernelEarlyWarning/ticket"}


@pytest.mark.parametrize("args, words", [
    (["--window-scale", "2"], ["window scale must be in (0, 1]"]),
    (["--window-scale", "0"], ["window scale must be in (0, 1]"]),
    (["--window-scale", "fast"], ["--window-scale expects a number"]),
    (["--window-scale", "1/240"], ["5m window 1s250ms", "4 scrape intervals of 15s", "at least 0.2"]),
    (["--window-scale", "1/60", "--scrape-interval", "2s"], ["5m window 5s", "at least 0.02667"]),
    (["--ttft-threshold", "fast"], ["--ttft-threshold", "expected a duration"]),
    (["--latency-threshold", "0s"], ["--latency-threshold must be longer than zero"]),
    (["--scrape-interval", "15x"], ["--scrape-interval", "expected a duration"]),
    (["--objective-errors", "90"], ["too loose to page", "144%"]),
    (["--objective-ttft", "100%"], ["ttft objective must be between 0 and 1"]),
    (["--objective-latency", "high"], ["--objective-latency expects a percentage"]),
    (["--error-codes", "5(("], ["not a valid regular expression"]),
    (["--service-label", "bad-label"], ["'bad-label' is not a valid Prometheus label name"]),
    (["--ttft-metric", "ttft seconds"], ["TTFT metric 'ttft seconds' is not a valid Prometheus metric name"]),
])
@pytest.mark.slow
def test_cli_rejects_bad_options_without_writing(tmp_path, args, words):
    out = tmp_path / "rules.yml"
    out.write_text("previous\n")
    p = run("rules", "generate", "--output", str(out), *args)
    assert_usage_error(p, *words)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert out.read_text() == "previous\n"
    assert list(tmp_path.iterdir()) == [out]


def test_cli_unwritable_output(tmp_path):
    p = run("rules", "generate", "--output", str(tmp_path / "missing" / "rules.yml"))
    assert_usage_error(p, "cannot write", "missing")
