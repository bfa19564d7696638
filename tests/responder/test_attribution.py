"""Attribution v0 on hand-built captures: which domain, how sure, and when it abstains."""
from __future__ import annotations

import json

import pytest

from capture.attribution import engine as A
from capture.attribution import rules as R
from capture.attribution.verdict import DOMAINS, Verdict
from capture.schemas import CaptureResult, CaptureTarget, Histogram, ProbeResult
from responder.attribution.engine import attribute

RULE = {r.signal: r for r in R.RULES}
RUNQ = RULE["runq_latency.share_waits_over_1ms"]

INC_S = 10.0  # incident window
BASE_S = 60.0  # baseline window


def retrans(per_s: float, window: float, top: list | None = None, **kw) -> ProbeResult:
    return ProbeResult("tcp_retrans", window, counters={"retransmits": per_s * window},
                       top={"peers": top} if top else {}, **kw)


def connect(failed_per_s: float, window: float, latency: dict[int, int] | None = None, **kw) -> ProbeResult:
    hist = {"connect_latency": Histogram("us", dict(latency))} if latency is not None else {}
    return ProbeResult("tcp_connect", window, counters={"connects": 50, "failed": failed_per_s * window},
                       histograms=hist, **kw)


def runq(fast: int, slow: int, window: float, slow_bucket: int = 4096, **kw) -> ProbeResult:
    """``fast`` waits under 32 µs and ``slow`` waits in the bucket up to ``slow_bucket`` µs."""
    buckets = {16: fast}
    if slow:
        buckets[slow_bucket] = slow
    return ProbeResult("runq_latency", window, histograms={"runq_wait": Histogram("us", buckets)}, **kw)


def capture(incident: list[ProbeResult], baseline: list[ProbeResult], note: str = "flight recorder, 60s") -> CaptureResult:
    return CaptureResult(id="cap-1", node="node-a", target=CaptureTarget(pids=[4242]), started_at=1000.0,
                         ended_at=1000.0 + INC_S, incident={p.probe: p for p in incident},
                         baseline={p.probe: p for p in baseline}, baseline_note=note)


def flat_runq() -> tuple[ProbeResult, ProbeResult]:
    return runq(1000, 0, INC_S), runq(6000, 0, BASE_S)


def hyp(verdict: Verdict, domain: str):
    return next(h for h in verdict.hypotheses if h.domain == domain)


# --- single domains --------------------------------------------------------------------------

def test_retransmits_up_against_baseline_is_network():
    ri, rb = flat_runq()
    v = attribute(capture([retrans(4.0, INC_S, top=[{"peer": "10.0.0.7:443", "count": 40}]), ri],
                          [retrans(0.1, BASE_S), rb]))
    assert v.domains == ["network"]
    assert v.abstain_reason is None
    assert v.confidence >= A.MIN_CONFIDENCE
    assert [h.domain for h in v.hypotheses] == ["network", "app_cpu"]  # ranked
    net = hyp(v, "network")
    assert net.confidence == pytest.approx(v.confidence)
    assert [e.signal for e in net.supporting] == ["tcp_retrans.retransmits_per_s"]
    ev = net.supporting[0]
    assert ev.baseline == pytest.approx(0.1) and ev.incident == pytest.approx(4.0)
    assert "rose" in ev.summary and "10.0.0.7:443" in ev.summary
    # the run queue that stayed flat argues against app_cpu
    cpu = hyp(v, "app_cpu")
    assert cpu.confidence == 0.0
    # ...and so does network's signal that moved
    assert cpu.supporting == []
    assert [e.signal for e in cpu.contradicting] == ["runq_latency.share_waits_over_1ms",
                                                     "tcp_retrans.retransmits_per_s"]
    # network's own contradicting evidence: nothing else moved
    assert net.contradicting == []
    # the arithmetic behind the confidence and the decision, as the incident page shows them
    strength = A.ratio_strength(4.0, 0.1)
    assert net.arithmetic == (f"tcp_retrans.retransmits_per_s 0.1 → 4: {strength:.2f} · strength {strength:.2f} → "
                              f"score {strength:.2f} / ({strength:.2f} + 0.5) = {net.confidence:.2f}")
    assert v.decision == f"named: network score {net.confidence:.2f} ≥ 0.50 and leads app_cpu 0.00 by " \
                         f"{net.confidence:.2f} ≥ 0.15"


def test_runq_slow_share_up_is_app_cpu():
    v = attribute(capture([retrans(0.1, INC_S), runq(800, 200, INC_S)],
                          [retrans(0.1, BASE_S), runq(6000, 0, BASE_S)]))
    assert v.domains == ["app_cpu"]
    cpu = hyp(v, "app_cpu")
    assert cpu.confidence == pytest.approx(v.confidence) and v.confidence >= A.MIN_CONFIDENCE
    ev = cpu.supporting[0]
    assert ev.signal == "runq_latency.share_waits_over_1ms"
    assert ev.incident == pytest.approx(0.2) and ev.baseline == 0.0
    assert "rose" in ev.summary
    # network's flat retransmits contradict it, and app_cpu's moved signal does too
    net = hyp(v, "network")
    assert net.confidence == 0.0
    assert {e.signal for e in net.contradicting} == {"tcp_retrans.retransmits_per_s",
                                                     "runq_latency.share_waits_over_1ms"}


def test_waits_under_one_ms_do_not_count_as_slow():
    # Every incident wait in the bucket [512, 1024) µs: longer than baseline, but under 1 ms.
    v = attribute(capture([runq(0, 1000, INC_S, slow_bucket=1024)], [runq(6000, 0, BASE_S)]))
    assert v.domains == []
    assert hyp(v, "app_cpu").confidence == 0.0


def test_failed_connects_and_connect_latency_are_network():
    base_lat = {128: 50}  # p90 ≤ 128 µs
    inc_lat = {128: 10, 4096: 40}  # p90 ≤ 4 ms: SYNs retransmitted
    v = attribute(capture([connect(2.0, INC_S, inc_lat)], [connect(0.0, BASE_S, base_lat)]))
    assert v.domains == ["network"]
    signals = {e.signal for e in hyp(v, "network").supporting}
    assert signals == {"tcp_connect.failures_per_s", "tcp_connect.latency_p90_us"}
    # two signals are stronger than one
    one = attribute(capture([connect(2.0, INC_S, base_lat)], [connect(0.0, BASE_S, base_lat)]))
    assert one.domains == ["network"]
    assert v.confidence > one.confidence


def test_connect_latency_needs_enough_connects():
    v = attribute(capture([connect(0.0, INC_S, {4096: RULE["tcp_connect.latency_p90_us"].min_samples - 1})],
                          [connect(0.0, BASE_S, {128: 50})]))
    net = hyp(v, "network")
    assert "tcp_connect.latency_p90_us" not in {e.signal for e in net.supporting + net.contradicting}
    assert v.domains == []


# --- abstain ---------------------------------------------------------------------------------

def test_nothing_moved_abstains_with_a_reason():
    ri, rb = flat_runq()
    v = attribute(capture([retrans(0.1, INC_S), ri], [retrans(0.1, BASE_S), rb]))
    assert v.domains == [] and v.abstained
    assert v.abstain_reason and "too weak" in v.abstain_reason
    assert v.confidence == 0.0
    assert all(h.supporting == [] for h in v.hypotheses)


def test_empty_capture_abstains():
    v = attribute(capture([], []))
    assert v.domains == []
    assert "no usable evidence" in v.abstain_reason and "saw nothing" in v.abstain_reason


def test_no_baseline_abstains_mentioning_baseline():
    v = attribute(capture([retrans(5.0, INC_S), runq(800, 200, INC_S)], [],
                          note="the flight recorder had no samples yet"))
    assert v.domains == []
    assert "baseline" in v.abstain_reason
    assert "the flight recorder had no samples yet" in v.abstain_reason
    assert "tcp_retrans" in v.abstain_reason and "runq_latency" in v.abstain_reason


def test_no_baseline_without_note_still_says_so():
    v = attribute(capture([retrans(5.0, INC_S)], [], note=""))
    assert v.domains == [] and "no baseline" in v.abstain_reason and "none recorded" in v.abstain_reason


def test_probe_error_abstains_with_the_gap():
    v = attribute(capture([retrans(0, INC_S, error="attach failed: Operation not permitted")],
                          [retrans(0.1, BASE_S)]))
    assert v.domains == []
    assert "tcp_retrans failed: attach failed: Operation not permitted" in v.abstain_reason


def test_failed_probe_does_not_hide_the_others_but_is_reported_when_weak():
    # runq failed; retransmits flat: too weak, and the reason carries the failure.
    v = attribute(capture([retrans(0.1, INC_S), runq(0, 0, INC_S, error="BPF verifier rejected the program")],
                          [retrans(0.1, BASE_S), runq(6000, 0, BASE_S)]))
    assert v.domains == []
    assert "too weak" in v.abstain_reason
    assert "runq_latency failed: BPF verifier rejected the program" in v.abstain_reason
    # runq failed; retransmits clearly up: network is still named.
    v = attribute(capture([retrans(4.0, INC_S), runq(0, 0, INC_S, error="boom")],
                          [retrans(0.1, BASE_S), runq(6000, 0, BASE_S)]))
    assert v.domains == ["network"]


def test_too_few_runq_samples_is_a_gap():
    v = attribute(capture([runq(RUNQ.min_samples - 1, 0, INC_S)], [runq(6000, 0, BASE_S)]))
    assert v.domains == []
    assert f"fewer than {RUNQ.min_samples} waits" in v.abstain_reason


def test_truncated_probe_is_named_when_abstaining():
    v = attribute(capture([retrans(0.1, INC_S, truncated="event budget of 5000/s reached")],
                          [retrans(0.1, BASE_S)]))
    assert v.domains == []
    assert "cut short: event budget of 5000/s reached" in v.abstain_reason


def test_none_capture_abstains():
    v = attribute(None)
    assert v.domains == [] and v.confidence == 0.0 and v.hypotheses == []
    assert "no capture" in v.abstain_reason


# --- two domains -----------------------------------------------------------------------------

def test_both_domains_strong_are_named_together():
    v = attribute(capture([retrans(8.0, INC_S), runq(700, 300, INC_S)],
                          [retrans(0.1, BASE_S), runq(6000, 0, BASE_S)]))
    assert sorted(v.domains) == ["app_cpu", "network"]
    assert v.abstain_reason is None
    assert v.confidence == pytest.approx(min(h.confidence for h in v.hypotheses))
    for h in v.hypotheses:
        assert h.confidence >= A.BOTH_CONFIDENCE
        assert h.supporting, h.domain
        assert h.contradicting, h.domain  # the other domain's moved signal


def test_both_named_even_when_one_leads_by_more_than_the_margin():
    # Network with three full-strength signals, app_cpu with its one: overlapping faults.
    v = attribute(capture([retrans(8.0, INC_S), connect(2.0, INC_S, {128: 10, 8192: 40}), runq(700, 300, INC_S)],
                          [retrans(0.1, BASE_S), connect(0.0, BASE_S, {128: 50}), runq(6000, 0, BASE_S)]))
    net, cpu = hyp(v, "network"), hyp(v, "app_cpu")
    assert net.confidence - cpu.confidence >= A.MIN_MARGIN
    assert v.domains == ["network", "app_cpu"]


def test_two_moderate_causes_are_two_faults():
    # Both rise 7x over baseline: each is past the naming threshold, neither is full strength;
    # both are causes (retransmits, run-queue waits), so two faults overlap.
    v = attribute(capture([retrans(7.0, INC_S), runq(860, 140, INC_S, slow_bucket=2048)],
                          [retrans(1.0, BASE_S), runq(5880, 120, BASE_S, slow_bucket=2048)]))
    net, cpu = hyp(v, "network"), hyp(v, "app_cpu")
    assert A.MIN_CONFIDENCE <= cpu.confidence < A.BOTH_CONFIDENCE
    assert A.MIN_CONFIDENCE <= net.confidence < A.BOTH_CONFIDENCE
    assert abs(net.confidence - cpu.confidence) < A.MIN_MARGIN
    assert set(v.domains) == {"network", "app_cpu"}


def test_close_symptoms_without_a_cause_abstain_two_ways():
    from tests.responder.test_attribution_traces import evidence

    # The provider's first tokens and the guardrail both slower, about as much, nothing else moved.
    v = attribute(None, traces=evidence({"llm_ms": 2000, "policy_ms": 27}))
    llm, policy = hyp(v, "provider_latency"), hyp(v, "policy_layer")
    assert A.MIN_CONFIDENCE <= min(llm.confidence, policy.confidence)
    assert abs(llm.confidence - policy.confidence) < A.MIN_MARGIN
    assert v.domains == []
    assert "two ways" in v.abstain_reason
    assert "provider_latency" in v.abstain_reason and "policy_layer" in v.abstain_reason


def test_clear_leader_over_a_weak_second_is_named_alone():
    # network full strength; app_cpu barely moved (weak, far behind)
    v = attribute(capture([retrans(8.0, INC_S), connect(2.0, INC_S), runq(860, 140, INC_S, slow_bucket=2048)],
                          [retrans(0.1, BASE_S), connect(0.0, BASE_S), runq(5760, 240, BASE_S, slow_bucket=2048)]))
    cpu = hyp(v, "app_cpu")
    assert 0 < cpu.confidence < A.MIN_CONFIDENCE
    assert v.domains == ["network"]


# --- thresholds ------------------------------------------------------------------------------

def test_retransmits_just_below_min_excess_do_not_support_network():
    below = RULE["tcp_retrans.retransmits_per_s"].threshold * 0.98
    v = attribute(capture([retrans(below, INC_S)], [retrans(0.0, BASE_S)]))
    net = hyp(v, "network")
    assert net.confidence == 0.0 and net.supporting == []
    assert "did not rise enough" in net.contradicting[0].summary
    assert v.domains == []


def test_retransmits_at_min_excess_support_network():
    v = attribute(capture([retrans(RULE["tcp_retrans.retransmits_per_s"].threshold, INC_S)], [retrans(0.0, BASE_S)]))
    net = hyp(v, "network")
    assert net.confidence > 0 and net.supporting
    assert v.domains == ["network"]  # from a zero baseline the ratio counts as full strength


def test_retransmit_ratio_below_min_ratio_does_not_count():
    # A busy service doing more of the same: 2.9x with a large excess is not enough...
    v = attribute(capture([retrans(2.9 * 10, INC_S)], [retrans(10.0, BASE_S)]))
    assert hyp(v, "network").confidence == 0.0
    # ...but at MIN_RATIO it is.
    v = attribute(capture([retrans(R.MIN_RATIO * 10, INC_S)], [retrans(10.0, BASE_S)]))
    assert hyp(v, "network").confidence > 0.0


def test_runq_share_just_below_minimum_does_not_count():
    n = 1000
    slow = int(RUNQ.threshold * n) - 1  # 4.9 %
    v = attribute(capture([runq(n - slow, slow, INC_S)], [runq(6000, 0, BASE_S)]))
    assert hyp(v, "app_cpu").confidence == 0.0
    slow = int(RUNQ.threshold * n)  # 5 %
    v = attribute(capture([runq(n - slow, slow, INC_S)], [runq(6000, 0, BASE_S)]))
    assert hyp(v, "app_cpu").confidence > 0.0


def test_confidence_grows_with_the_ratio_and_is_bounded():
    confs = []
    for per_s in (1.0, 2.0, 5.0, 50.0, 500.0):
        v = attribute(capture([retrans(per_s, INC_S)], [retrans(0.1, BASE_S)]))
        confs.append(hyp(v, "network").confidence)
    assert confs == sorted(confs)
    assert confs[0] < confs[-1]
    assert all(0.0 <= c < 1.0 for c in confs)
    assert confs[-1] == pytest.approx(1.0 / (1.0 + A.STRENGTH_HALF))  # one signal, capped at full strength


# --- the contract ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: None,
    lambda: capture([], []),
    lambda: capture([retrans(4.0, INC_S)], [retrans(0.1, BASE_S)]),
    lambda: capture([retrans(8.0, INC_S), runq(700, 300, INC_S)], [retrans(0.1, BASE_S), runq(6000, 0, BASE_S)]),
    lambda: capture([retrans(0.1, INC_S), runq(1000, 0, INC_S)], [retrans(0.1, BASE_S), runq(6000, 0, BASE_S)]),
], ids=["none", "empty", "network", "both", "flat"])
def test_verdict_dict_matches_design_contract(make):
    d = attribute(make()).to_dict()
    json.dumps(d)  # plain JSON types
    assert set(d) == {"domains", "confidence", "hypotheses", "abstain_reason", "calibration", "decision", "score"}
    assert isinstance(d["domains"], list) and set(d["domains"]) <= set(DOMAINS)
    assert isinstance(d["confidence"], float) and 0.0 <= d["confidence"] <= 1.0
    assert isinstance(d["hypotheses"], list)
    for h in d["hypotheses"]:
        assert set(h) == {"domain", "confidence", "score", "supporting", "contradicting", "arithmetic"}
        assert h["domain"] in DOMAINS and 0.0 <= h["confidence"] <= 1.0
        for e in h["supporting"] + h["contradicting"]:
            assert {"signal", "summary", "baseline", "incident"} <= set(e)
    confs = [h["confidence"] for h in d["hypotheses"]]
    assert confs == sorted(confs, reverse=True)
    # abstain exactly when no domain is named, and then a reason is given
    assert (d["domains"] == []) == (d["abstain_reason"] is not None)
    if d["abstain_reason"] is not None:
        assert isinstance(d["abstain_reason"], str) and d["abstain_reason"]
    # round trip
    assert Verdict.from_dict(d).to_dict() == d


def oom(kills: int, window: float) -> ProbeResult:
    return ProbeResult("oom_kill", window, counters={"oom_kills": float(kills)},
                       top={"victims": [{"peer": "python3", "count": kills}]} if kills else {})


def test_an_oom_kill_against_none_in_the_baseline_is_app_memory():
    inc_runq, base_runq = flat_runq()
    v = attribute(capture([oom(1, INC_S), inc_runq], [oom(0, BASE_S), base_runq]))
    assert v.domains == ["app_memory"]
    assert "python3" in hyp(v, "app_memory").supporting[0].summary


def test_oom_kills_as_frequent_as_in_the_baseline_do_not_count():
    inc_runq, base_runq = flat_runq()
    v = attribute(capture([oom(1, INC_S), inc_runq], [oom(6, BASE_S), base_runq]))
    assert v.domains == []


# --- the domains of the wider probe catalog -------------------------------------------------

def backend(per_peer: dict[str, tuple[int, float]], window: float) -> ProbeResult:
    """A backend_latency result: per peer, (requests, mean latency in ms)."""
    return ProbeResult("backend_latency", window, counters={"requests": sum(n for n, _ in per_peer.values())}, top={
        "peers": [{"peer": p, "count": n} for p, (n, _) in per_peer.items()],
        "latency_sum_us": [{"peer": p, "count": int(n * ms * 1000)} for p, (n, ms) in per_peer.items()]})


def tls(n429: float, n5xx: float, window: float, ttfb: dict[int, int] | None = None) -> ProbeResult:
    return ProbeResult("tls_http", window, counters={"responses": 100, "status_429": n429, "status_5xx": n5xx},
                       histograms={"ttfb": Histogram("us", dict(ttfb or {262144: 50}))},
                       top={"throttled_peers": [{"peer": "10.0.0.9:443", "count": int(n429)}]} if n429 else {})


@pytest.mark.parametrize("incident, baseline, domain, signal", [
    (tls(30, 0, INC_S), tls(0, 0, BASE_S), "provider_throttling", "tls_http.status_429_per_s"),
    (tls(0, 25, INC_S), tls(0, 0, BASE_S), "provider_throttling", "tls_http.status_5xx_per_s"),
    (tls(0, 0, INC_S, {4194304: 40}), tls(0, 0, BASE_S, {262144: 200}), "provider_latency", "tls_http.ttfb_p90_us"),
    (ProbeResult("dns", INC_S, counters={"lookups": 40, "failures": 12}),
     ProbeResult("dns", BASE_S, counters={"lookups": 240, "failures": 0}), "dns", "dns.failures_per_s"),
    (ProbeResult("dns", INC_S, histograms={"latency": Histogram("us", {262144: 20})}),
     ProbeResult("dns", BASE_S, histograms={"latency": Histogram("us", {512: 100})}), "dns", "dns.latency_p90_us"),
    (backend({"10.0.0.7:5432": (30, 400.0)}, INC_S), backend({"10.0.0.7:5432": (300, 3.0)}, BASE_S),
     "retrieval_backend", "backend_latency.peer_mean_ms"),
    (ProbeResult("cpu_throttle", INC_S, counters={"nr_throttled": 80}),
     ProbeResult("cpu_throttle", BASE_S, counters={"nr_throttled": 0}), "app_cpu", "cpu_throttle.throttled_periods_per_s"),
    (ProbeResult("memory_pressure", INC_S, counters={"limit_hits": 400}),
     ProbeResult("memory_pressure", BASE_S, counters={"limit_hits": 0}), "app_memory",
     "memory_pressure.limit_hits_per_s"),
])
def test_each_probe_family_names_its_domain(incident, baseline, domain, signal):
    ri, rb = flat_runq()
    v = attribute(capture([incident, ri], [baseline, rb]))
    assert v.domains == [domain], v.abstain_reason
    assert signal in [e.signal for e in hyp(v, domain).supporting]


def test_unchanged_provider_responses_are_evidence_against_throttling():
    ri, rb = flat_runq()
    v = attribute(capture([tls(1, 0, INC_S), retrans(4.0, INC_S), ri], [tls(6, 0, BASE_S), retrans(0.1, BASE_S), rb]))
    assert v.domains == ["network"]
    assert hyp(v, "provider_throttling").confidence == 0.0


def test_a_decision_never_reads_as_a_bound_below_itself():
    from capture.attribution.engine import _below

    assert _below(0.4999, 0.5) == "0.4999 < 0.50"  # not "0.50 < 0.50"
    assert _below(0.31, 0.5) == "0.31 < 0.50" and _below(0.146, 0.15) == "0.146 < 0.15"


def test_throttling_does_not_explain_a_slower_first_byte_of_each_response():
    ri, rb = flat_runq()
    # Throttled answers and a slower first byte per response: the retries and their waits fall
    # between responses, so the slower responses are the provider's own latency, a second finding.
    v = attribute(capture([tls(30, 0, INC_S, {2097152: 40}), ri], [tls(0, 0, BASE_S, {262144: 200}), rb]))
    slow = hyp(v, "provider_latency").supporting[0]
    assert slow.signal == "tls_http.ttfb_p90_us" and "likely a symptom" not in slow.summary
    assert hyp(v, "provider_latency").confidence > 0.55
    # A starved process reads every response late: that explains the first byte.
    v = attribute(capture([tls(30, 0, INC_S, {2097152: 40}), runq(400, 600, INC_S)],
                          [tls(0, 0, BASE_S, {262144: 200}), runq(6000, 60, BASE_S)]))
    assert "likely a symptom of app_cpu" in hyp(v, "provider_latency").supporting[0].summary


def test_more_provider_calls_answered_is_demand_that_explains_the_cpu_waits():
    def answered(per_s: float, window: float) -> ProbeResult:
        return ProbeResult("tls_http", window, counters={"responses": per_s * window, "status_2xx": per_s * window},
                           histograms={"ttfb": Histogram("us", {262144: 50})})

    starved = (runq(400, 600, INC_S), runq(6000, 60, BASE_S))
    # Three times the successful provider calls per second: demand, and the CPU waits are its.
    v = attribute(capture([answered(45, INC_S), starved[0]], [answered(15, BASE_S), starved[1]]))
    assert v.domains == ["traffic"], v.to_dict()
    demand = hyp(v, "traffic").supporting[0]
    assert demand.signal == "tls_http.status_2xx_per_s" and demand.summary == (
        "provider calls answered 2xx rose: 15.0 → 45.0/s (×3.0)")
    assert "likely demand" in hyp(v, "app_cpu").supporting[0].summary
    # The same calls per second: a CPU fault.
    v = attribute(capture([answered(15, INC_S), starved[0]], [answered(15, BASE_S), starved[1]]))
    assert v.domains == ["app_cpu"] and hyp(v, "traffic").confidence == 0.0
    # Too few calls counted in a window say nothing.
    v = attribute(capture([answered(0.5, INC_S), starved[0]], [answered(0.1, BASE_S), starved[1]]))
    assert not any(e.signal == "tls_http.status_2xx_per_s" for h in v.hypotheses for e in h.supporting + h.contradicting)


def test_backend_latency_is_read_per_peer():
    db, exporter = "10.0.0.7:5432", "127.0.0.1:4318"
    ri, rb = flat_runq()
    # The database's replies 100 times slower: the backend, named by its peer.
    v = attribute(capture([backend({db: (200, 300.0), exporter: (10, 6.0)}, INC_S), ri],
                          [backend({db: (900, 3.0), exporter: (50, 5.0)}, BASE_S), rb]))
    assert v.domains == ["retrieval_backend"], v.to_dict()
    ev = hyp(v, "retrieval_backend").supporting[0]
    assert ev.summary == f"backend reply latency (mean per peer) rose on 1 of 2 peers: {db} 3.0 → 300.0 ms"
    # Another peer's slow replies (a second of waiting on a connection the workload holds open)
    # do not lift the database's: nothing moved.
    v = attribute(capture([backend({db: (200, 3.2), "127.0.0.1:40404": (10, 1000.0)}, INC_S), ri],
                          [backend({db: (900, 3.0), "127.0.0.1:40404": (6, 990.0)}, BASE_S), rb]))
    assert not v.domains
    flat = next(e for e in hyp(v, "retrieval_backend").contradicting if e.signal == "backend_latency.peer_mean_ms")
    assert "flat on all 2 peers" in flat.summary
    # A peer new in the incident (no baseline to compare with) says nothing.
    v = attribute(capture([backend({db: (200, 3.2), "127.0.0.53:53": (60, 3000.0)}, INC_S), ri],
                          [backend({db: (900, 3.0)}, BASE_S), rb]))
    assert not v.domains
