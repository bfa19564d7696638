"""Rendering of the incident thread: each root state, the attribution reply, limits, abstain."""
from __future__ import annotations

import json

import pytest

from capture.attribution.verdict import DOMAINS, Evidence, Hypothesis, Verdict
from capture.schemas import CaptureCost, CaptureResult, CaptureTarget, ProbeResult
from responder.render.thread import (
    MAX_BLOCKS,
    MAX_HEADER_CHARS,
    MAX_SECTION_CHARS,
    Message,
    render_attribution,
    render_error,
    render_resolved,
    render_root,
)
from responder.render.view import root_state

URL = "http://responder.example/incidents/inc-42"


def _incident(**over):
    inc = {
        "id": "inc-42", "group_key": "{}:{alertname=\"LLMTTFTBurnRate\"}", "status": "firing",
        "created_at": "2024-11-27T10:42:30Z", "resolved_at": None,
        "labels": {"alertname": "LLMTTFTBurnRate", "service": "rag-api"},
        "alerts": [{"labels": {"alertname": "LLMTTFTBurnRate"}, "annotations": {},
                    "startsAt": "2024-11-27T10:42:01.123456789Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus.example/graph?g0.expr=burn"}],
        "playbook": "llm-latency", "verdict": None, "capture": None, "report": None, "thread": None,
        "error": None,
    }
    inc.update(over)
    return inc


def _ev(i: int, **over) -> Evidence:
    kw = dict(signal=f"tls_http.status_429_per_s.{i}", summary=f"HTTP 429 from the provider #{i}",
              baseline=0.0, incident=14.5, unit="/s", source="kernel", link=f"http://responder.example/e/{i}")
    kw.update(over)
    return Evidence(**kw)


def calibrated(verdict: Verdict) -> Verdict:
    """A verdict as the responder stores it with a lab calibration applied; here the identity
    map, so the numbers the tests read are the ones they set."""
    verdict.score = verdict.confidence
    for h in verdict.hypotheses:
        h.score = h.confidence
    return verdict


def _verdict() -> Verdict:
    return calibrated(Verdict(domains=["provider_throttling"], confidence=0.823, hypotheses=[
        Hypothesis("provider_throttling", 0.823, supporting=[_ev(1), _ev(2, source="trace")],
                   contradicting=[_ev(3, summary="TCP retransmits flat", baseline=0.2, incident=0.21,
                                      unit="retransmits/s", link=None)]),
        Hypothesis("network", 0.11, supporting=[_ev(4)]),
    ]))


def _capture(**over) -> CaptureResult:
    kw = dict(id="cap-1", node="node-a", target=CaptureTarget(pids=[4242], ports=[443]),
              started_at=1732704150.0, ended_at=1732704160.0,
              incident={"tls_http": ProbeResult("tls_http", 10.0, error="libssl not found in pid 4242"),
                        "tcp_retrans": ProbeResult("tcp_retrans", 10.0, truncated="event budget reached",
                                                   lost=12)},
              cost=CaptureCost(bpf_run_time_ns=1_200_000, bpf_run_count=3400, events=3400, agent_cpu_s=0.05,
                               startup_ms=310, wall_s=10.4),
              errors=["runq_latency: tracepoint sched:sched_wakeup unavailable"])
    kw.update(over)
    return CaptureResult(**kw)


def _all_text(msg: Message) -> str:
    return json.dumps(msg.blocks, ensure_ascii=False)


def _assert_slack_limits(msg: Message) -> None:
    assert len(msg.blocks) <= MAX_BLOCKS
    for b in msg.blocks:
        if b["type"] == "section":
            assert len(b["text"]["text"]) <= MAX_SECTION_CHARS
        if b["type"] == "header":
            assert b["text"]["type"] == "plain_text"
            assert len(b["text"]["text"]) <= MAX_HEADER_CHARS
        if b["type"] == "context":
            assert 1 <= len(b["elements"]) <= 10


# -- root


@pytest.mark.parametrize("over, state, word", [
    ({}, "capturing", "CAPTURING"),
    ({"verdict": _verdict().to_dict()}, "attributed", "ATTRIBUTED"),
    ({"verdict": Verdict([], 0.4, abstain_reason="two domains too close").to_dict()}, "abstained", "ABSTAINED"),
    ({"status": "resolved", "resolved_at": "2024-11-27T10:46:13Z", "verdict": _verdict().to_dict()},
     "resolved", "RESOLVED"),
    ({"error": "agent unreachable"}, "failed", "FAILED"),
])
def test_root_shows_state_alert_id_and_link(over, state, word):
    inc = _incident(**over)
    assert root_state(inc) == state
    msg = render_root(inc, URL)
    assert word in msg.text and "LLMTTFTBurnRate" in msg.text and "inc-42" in msg.text and URL in msg.text
    assert "\n" not in msg.blocks[0]["text"]["text"]
    assert f"<{URL}|inc-42>" in msg.blocks[0]["text"]["text"]
    buttons = [b["action_id"] for b in msg.blocks[-1]["elements"]]
    assert msg.blocks[-1]["type"] == "actions" and buttons[:2] == ["llmslo_capture_again", "llmslo_deep_capture"]
    assert ("llmslo_acknowledge" in buttons) == (state != "resolved")  # nothing to acknowledge once resolved
    _assert_slack_limits(msg)


def test_root_names_top_domain_and_confidence_only_when_attributed():
    attributed = render_root(_incident(verdict=_verdict().to_dict()), URL)
    assert "provider_throttling 82%" in attributed.text
    assert "*provider_throttling* 82%" in attributed.blocks[0]["text"]["text"]
    capturing = render_root(_incident(), URL)
    assert "%" not in capturing.text


def test_root_escapes_mrkdwn_control_characters():
    msg = render_root(_incident(labels={"alertname": "a<b>&c"}), URL)
    assert "a&lt;b&gt;&amp;c" in msg.blocks[0]["text"]["text"]
    assert "a<b>&c" in msg.text


# -- attribution


def test_attribution_reply_is_the_verdict_its_deciding_signals_what_it_is_not_the_capture_and_links():
    inc = _incident(verdict=_verdict().to_dict())
    msg = render_attribution(inc, _verdict(), _capture(), [{"title": "Provider 429s", "url": "http://wiki/429"}],
                             URL)
    _assert_slack_limits(msg)
    blocks = _all_text(msg)
    assert msg.blocks[0]["type"] == "header"
    assert msg.blocks[0]["text"]["text"] == "LLMTTFTBurnRate: provider_throttling (82% confidence)"
    assert "Fault domain *provider_throttling* at 82% confidence" in blocks
    # the deciding signals in words, each move written once, with its source and link
    assert "HTTP 429 from the provider #1 (0 → 14.5/s, kernel) · <http://responder.example/e/1|evidence>" in blocks
    assert "HTTP 429 from the provider #2 (0 → 14.5/s, trace)" in blocks
    assert "baseline 0" not in blocks and "tls_http.status_429_per_s" not in blocks
    # what it is not, in one line; the full table (contradicting evidence, the runner-up's) is on the page
    assert "Less likely: network 11%." in blocks
    assert "TCP retransmits flat" not in blocks and "provider #4" not in blocks
    assert "pid:4242, port:443" in blocks and "node-a" in blocks
    assert _capture().cost.summary() in blocks
    assert ("Probe problems: runq_latency: tracepoint sched:sched_wakeup unavailable; tls_http: error: libssl not "
            "found in pid 4242; tcp_retrans: truncated: event budget reached; and 1 more") in blocks
    assert f"<{URL}|incident page>" in blocks
    assert "<http://wiki/429|Provider 429s>" in blocks
    assert "<http://prometheus.example/graph?g0.expr=burn|alert source>" in blocks
    assert len(msg.blocks) <= 8
    # the plain-text fallback carries the same story
    for needle in ("provider_throttling (82% confidence)", "HTTP 429 from the provider #1", "node-a",
                   "http://wiki/429", "libssl not found", "Less likely: network 11%"):
        assert needle in msg.text


def test_attribution_names_no_domain_that_scored_nothing():
    verdict = calibrated(Verdict(["network"], 0.9, [
        Hypothesis("network", 0.9, supporting=[_ev(1, summary="retransmits up")]),
        Hypothesis("dns", 0.004), Hypothesis("app_cpu", 0.0)]))
    blocks = _all_text(render_attribution(_incident(), verdict, None, [], URL))
    assert "No other fault domain scored above 0%." in blocks
    assert "dns" not in blocks and "app_cpu" not in blocks and " 0%" not in blocks.replace("above 0%", "")


def test_attribution_without_capture_or_generator_url_says_so():
    inc = _incident(alerts=[{"labels": {}, "annotations": {}, "startsAt": "2024-11-27T10:42:01Z",
                             "generatorURL": ""}])
    msg = render_attribution(inc, _verdict(), None, [], URL)
    blocks = _all_text(msg)
    assert "Kernel capture:* none" in blocks
    assert "runbook" not in blocks and "Prometheus" not in blocks and "alert source" not in blocks
    _assert_slack_limits(msg)


def test_abstain_renders_reason_and_the_two_it_could_not_separate():
    verdict = calibrated(Verdict(
        domains=[], confidence=0.41, abstain_reason="two domains too close (0.41 vs 0.38)",
        hypotheses=[Hypothesis("network", 0.38, supporting=[_ev(2, summary="retransmits up")]),
                    Hypothesis("provider_latency", 0.41, supporting=[_ev(1, summary="TTFT up")]),
                    Hypothesis("dns", 0.05, supporting=[_ev(3, summary="dns slow")])]))
    msg = render_attribution(_incident(verdict=verdict.to_dict()), verdict, _capture(), [], URL)
    header = msg.blocks[0]["text"]["text"]
    assert header == "LLMTTFTBurnRate: Abstained: two domains too close (0.41 vs 0.38)"
    blocks = _all_text(msg)
    # ranked by confidence, the two it could not separate, each with its strongest signal
    assert blocks.index("*provider_latency* 41%: TTFT up") < blocks.index("*network* 38%: retransmits up")
    assert "dns slow" not in blocks
    assert "Fault domain" not in blocks
    assert msg.text.startswith("LLMTTFTBurnRate: Abstained: two domains too close")
    root = render_root(_incident(verdict=verdict.to_dict()), URL)
    assert "ABSTAINED" in root.text and "41%" not in root.text


def test_huge_verdicts_respect_slack_limits_and_show_two_signals_a_domain():
    long_summary = "x" * 5000
    hyps = [Hypothesis(d, 0.9 - i * 0.1,
                       supporting=[_ev(j, summary=f"{d} support {j} " + long_summary) for j in range(200)],
                       contradicting=[_ev(j, summary=f"{d} against {j}") for j in range(200)])
            for i, d in enumerate(DOMAINS)]
    verdict = Verdict(domains=list(DOMAINS), confidence=0.9, hypotheses=hyps,
                      abstain_reason=None)
    runbooks = [{"title": f"runbook {i} " + "y" * 200, "url": f"http://wiki/{i}"} for i in range(40)]
    inc = _incident(labels={"alertname": "A" * 400}, verdict=verdict.to_dict())
    msg = render_attribution(inc, verdict, _capture(errors=["e" * 4000]), runbooks, URL)
    _assert_slack_limits(msg)
    blocks = _all_text(msg)
    assert msg.blocks[0]["text"]["text"].endswith("…")
    assert f"{DOMAINS[0]} support 0 " in blocks
    assert f"{DOMAINS[0]} support 2 " not in blocks and "against" not in blocks
    assert "<http://wiki/0|runbook 0" in blocks
    assert len(msg.text) <= 40000


def test_section_text_is_cut_with_ellipsis_not_inside_a_link():
    ev = _ev(1, summary="s" * 2990, link="http://responder.example/evidence/very-long")
    verdict = Verdict(["network"], 0.7, [Hypothesis("network", 0.7, supporting=[ev])])
    msg = render_attribution(_incident(), verdict, None, [], URL)
    _assert_slack_limits(msg)
    cut = [b for b in msg.blocks if b["type"] == "section" and "sss" in b["text"]["text"]][0]["text"]["text"]
    assert cut.endswith("…") and cut.count("<") == cut.count(">")


# -- resolved and error


def test_resolved_says_how_long_the_budget_burned():
    inc = _incident(status="resolved", resolved_at="2024-11-27T10:46:13Z", verdict=_verdict().to_dict())
    msg = render_resolved(inc)
    # from the alert's startsAt (10:42:01), earlier than the incident's created_at
    assert "burned for 4m 12s" in msg.text
    assert "Final attribution: provider_throttling (82%)" in msg.text
    assert "burned for 4m 12s" in msg.blocks[0]["text"]["text"]


def test_resolved_with_epoch_times_and_no_verdict():
    inc = _incident(status="resolved", created_at=1000.0, resolved_at=1000.0 + 3 * 3600 + 125,
                    alerts=[{"labels": {}, "startsAt": ""}])
    msg = render_resolved(inc)
    assert "burned for 3h 2m" in msg.text and "No attribution" in msg.text


def test_error_says_what_failed_and_that_the_incident_is_open():
    msg = render_error(_incident(), "capture agent node-a: connection refused\nTraceback ...")
    assert "connection refused" in msg.text and "still open" in msg.text
    assert "inc-42" in msg.text and "LLMTTFTBurnRate" in msg.text
    _assert_slack_limits(msg)
    huge = render_error(_incident(), "boom ```" + "z" * 10000)
    _assert_slack_limits(huge)
    assert huge.blocks[1]["text"]["text"].startswith("```") and huge.blocks[1]["text"]["text"].endswith("```")


def test_message_round_trips():
    msg = render_root(_incident(), URL)
    assert Message.from_dict(json.loads(json.dumps(msg.to_dict()))) == msg


def _app_evidence(prom_reachable: bool = True, traces_reachable: bool = True) -> dict:
    prom = {"reachable": prom_reachable, "error": None if prom_reachable else "Prometheus at http://p:9090 could "
            "not be queried: 3 attempts per query, last error: Connection refused", "queries": [
                {"name": "burn_rate_long", "title": "Burn rate over 1h", "expr": "x", "unit": "x", "kind": "burn_rate",
                 "baseline": {"mean": 0.4, "max": 0.9}, "incident": {"mean": 22.5, "max": 31.0},
                 "series": [], "link": "http://p:9090/graph?g0.expr=x", "grafana_link": None, "error": None},
                {"name": "bad", "title": "Broken query", "expr": "(", "unit": "", "kind": "signal",
                 "baseline": {"mean": None, "max": None}, "incident": {"mean": None, "max": None}, "series": [],
                 "link": None, "grafana_link": None, "error": "Prometheus rejected the query (HTTP 400)"}]}
    dep = lambda n, p90, errors, types=None: {"count": n, "errors": errors, "error_types": types or {},  # noqa: E731
                                              "p90_ms": p90}
    traces = {"backend": "tempo", "service": "rag-api", "reachable": traces_reachable,
              "error": None if traces_reachable else "tempo at http://t:3200: could not connect",
              "baseline": {"spans": 4100}, "incident": {"spans": 900},
              "dependencies": [{"kind": "llm", "name": "openai", "baseline": dep(300, 420, 0),
                                "incident": dep(80, 3900, 21, {"429": 19, "timeout": 2})}],
              "exemplars": [{"trace_id": "ab" * 16, "url": "http://t/trace/abab", "why": "llm openai: 429"}]}
    return {"prometheus": prom, "traces": traces}


def test_attribution_shows_the_burn_rate_and_the_most_changed_dependency_with_links():
    inc = _incident(verdict=_verdict().to_dict(), evidence=_app_evidence())
    msg = render_attribution(inc, _verdict(), _capture(), [], URL)
    _assert_slack_limits(msg)
    blocks = _all_text(msg)
    assert "Burn rate over 1h 0.4 → 22.5 x (<http://p:9090/graph?g0.expr=x|graph>)" in blocks
    assert "1 query failed (on the incident page)" in blocks and "HTTP 400" not in blocks
    assert "llm `openai` p90 420 → 3,900 ms, errors 0 → 21 (429 ×19, timeout ×2)" in blocks
    assert "<http://t/trace/abab|llm openai: 429>" in blocks
    assert "Burn rate over 1h" in msg.text


def test_attribution_says_when_prometheus_or_traces_could_not_be_reached():
    inc = _incident(verdict=_verdict().to_dict(), evidence=_app_evidence(False, False))
    blocks = _all_text(render_attribution(inc, _verdict(), None, [], URL))
    assert "*Prometheus* could not be reached: Prometheus at http://p:9090 could not be queried" in blocks
    assert "could not be read: tempo at http://t:3200: could not connect" in blocks


def test_no_traces_line_when_no_spans_were_read():
    evidence = _app_evidence()
    evidence["traces"].update(baseline={"spans": 0}, incident={"spans": 0}, dependencies=[], exemplars=[])
    blocks = _all_text(render_attribution(_incident(evidence=evidence), _verdict(), None, [], URL))
    assert "Traces" not in blocks and "Burn rate over 1h" in blocks


def test_a_capture_over_several_nodes_counts_its_pods_and_names_the_nodes_that_could_not_capture():
    pods = [{"namespace": "llm", "name": f"chat-7d9f-{i}", "uid": f"u{i}", "node": f"node-{i % 3}",
             "workload_kind": "Deployment", "workload": "chat", "containers": ["api"], "captured": i % 3 != 2}
            for i in range(11)]
    nodes = [{"node": "node-0", "status": "ok", "agent": "llmslo-agent-x", "error": None},
             {"node": "node-1", "status": "ok", "agent": "llmslo-agent-y", "error": None},
             {"node": "node-2", "status": "failed", "agent": "llmslo-agent-z", "error": "agent answered 503: busy"}]
    pods[0]["counters"] = {"tcp_retrans.retransmits": 340, "tcp_connect.established": 50}
    pods[1]["counters"] = {"tcp_retrans.retransmits": 10, "tcp_connect.established": 60}
    pods[2]["counters"] = {"runq_latency.wakeups": 900}  # not captured: not counted
    pods[3]["counters"] = {"dns.lookups": 19}  # too few to say anything
    cap = _capture(node="node-0, node-1", target=CaptureTarget(pods=["u0"]), pods=pods, nodes=nodes)
    msg = render_attribution(_incident(verdict=_verdict().to_dict()), _verdict(), cap, [], URL)
    _assert_slack_limits(msg)
    blocks = _all_text(msg)
    assert "*Kernel capture* of 11 pod(s) on 2 of 3 node(s), 10s window; 3 pod(s) not captured" in blocks
    assert "chat-7d9f-8" not in blocks  # each pod is listed on the incident page
    assert "Node `node-2`: failed: agent answered 503: busy" in blocks
    # One pod holds almost all of the retransmits: said; connects are spread: not said.
    assert "Concentrated: 97% of tcp_retrans.retransmits (350) in pod llm/chat-7d9f-0 on node-0" in blocks
    assert blocks.count("Concentrated:") == 1
    assert cap.cost.summary() in blocks and "sched:sched_wakeup unavailable" in blocks


def test_a_one_node_capture_names_the_pod_the_agent_found_in_the_api():
    w = {"id": 7, "path": "/kubepods.slice/x/cri-containerd-ab.scope", "container_id": "ab" * 32,
         "runtime": "containerd", "pod_uid": "u1", "qos": "burstable", "pod": "chat-7d9f-a", "namespace": "llm",
         "workload_kind": "Deployment", "workload": "chat", "container": "api", "node": "node-a"}
    msg = render_attribution(_incident(verdict=_verdict().to_dict()), _verdict(), _capture(workloads=[w]), [], URL)
    assert "pod llm/chat-7d9f-a, Deployment chat, container api, containerd abababababab" in _all_text(msg)


def test_the_most_changed_dependency_line_carries_the_kernels_counts_on_its_path():
    evidence = _app_evidence()
    llm = evidence["traces"]["dependencies"][0]
    llm["incident"]["peers"] = {"10.0.0.9:443": 80}
    lossy = lambda n, w: ProbeResult("tcp_retrans", w, counters={"retransmits": n},  # noqa: E731
                                     top={"peers": [{"peer": "10.0.0.9:443", "count": n}]})
    flow = lambda ms, w: ProbeResult("tcp_flow", w, top={  # noqa: E731
        "rtt_sum_us": [{"peer": "10.0.0.9:443", "count": int(ms * 1000 * 20)}],
        "rtt_samples": [{"peer": "10.0.0.9:443", "count": 20}]})
    cap = _capture(incident={"tcp_retrans": lossy(40, 10.0), "tcp_flow": flow(130, 10.0)},
                   baseline={"tcp_retrans": lossy(3, 60.0), "tcp_flow": flow(0.2, 60.0)})
    inc = _incident(verdict=_verdict().to_dict(), evidence=evidence, capture=cap.to_dict())
    blocks = _all_text(render_attribution(inc, _verdict(), cap, [], URL))
    assert ("errors 0 → 21 (429 ×19, timeout ×2); the kernel on its path: retransmits 0.05 → 4/s, "
            "sRTT 0.2 → 130 ms") in blocks
    # peers that are not on its path add nothing
    llm["incident"]["peers"] = {"10.0.0.7:5432": 80}
    blocks = _all_text(render_attribution(_incident(verdict=_verdict().to_dict(), evidence=evidence), _verdict(),
                                          cap, [], URL))
    assert "the kernel on its path" not in blocks


def test_a_preliminary_verdict_says_what_it_rests_on_and_that_a_capture_follows():
    capture = _capture(source="recorder", id="rec-1", started_at=1732704121.0, ended_at=1732704136.0)
    inc = _incident(preliminary={"verdict": _verdict().to_dict(), "at": 1732704137.0})
    msg = render_attribution(inc, _verdict(), capture, [], URL, pending_capture_s=10)
    assert msg.text.startswith("Preliminary · LLMTTFTBurnRate: provider_throttling (82% confidence)")
    text = _all_text(msg)
    assert "from the flight recorder" in text and "A 10s capture is running" in text
    assert "Flight recorder* of node `node-a`" in text and "15s of history since the burn began" in text
    assert "nothing attached for it: 50 ms of agent CPU" in text and "Capture's own cost" not in text
    _assert_slack_limits(msg)
    root = render_root(inc, URL)
    assert "preliminary: provider_throttling 82%, confirming" in root.text and "[CAPTURING]" in root.text


def test_the_captures_verdict_confirms_or_says_what_changed_and_why():
    prelim = _verdict()
    confirmed = render_attribution(_incident(), _verdict(), _capture(), [], URL, preliminary=prelim)
    assert "Confirmed* by the 10s capture (preliminary: provider_throttling 82%)" in _all_text(confirmed)
    assert not confirmed.text.startswith("Preliminary")

    network = calibrated(Verdict(domains=["network"], confidence=0.9, hypotheses=[
        Hypothesis("network", 0.9, supporting=[_ev(7, summary="retransmits to the provider", baseline=0.1,
                                                   incident=30.0)]),
        Hypothesis("provider_throttling", 0.05)]))
    changed = _all_text(render_attribution(_incident(), network, _capture(), [], URL, preliminary=prelim))
    assert "Changed* by the 10s capture: provider_throttling 82% → network 90%, because retransmits to the " \
           "provider" in changed
    abstained = Verdict(domains=[], confidence=0.0, abstain_reason="two domains too close")
    gone = _all_text(render_attribution(_incident(), abstained, _capture(), [], URL, preliminary=prelim))
    assert "provider_throttling 82% → abstained, because two domains too close" in gone


def test_the_reply_flags_what_the_workload_never_did_before():
    cap = _capture()
    assert "Never seen" not in _all_text(render_attribution(_incident(), _verdict(), cap, [], URL))
    cap.anomalies = [{"kind": "egress_peer", "what": "203.0.113.9:4444", "name": "rogue.example", "first_seen": 1700000000,
                      "count": 3, "score": 1.0, "flagged": True},
                     {"kind": "executable", "what": "/tmp/.cache/miner", "first_seen": 1700000010, "count": 1,
                      "score": 1.0, "flagged": True}]
    msg = render_attribution(_incident(), _verdict(), cap, [], URL)
    _assert_slack_limits(msg)
    assert (":warning: *Never seen on this workload before* (against its whole flight-recorder history): egress to "
            "203.0.113.9:4444 (rogue.example) since ") in _all_text(msg)
    assert "executable /tmp/.cache/miner since " in msg.text
