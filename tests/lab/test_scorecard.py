"""The scorecard without the lab stack: hand-made case rows with a known confusion matrix,
P/R/F1, abstain rate, calibration and detection times; and the mode ablation re-attributing a
stored incident (its capture and trace evidence) exactly as the responder stored it."""
from __future__ import annotations

import json
import random

import pytest

from capture.schemas import CaptureCost, CaptureResult, CaptureTarget, Histogram, ProbeResult
from lab import scorecard as S
from responder.attribution.engine import attribute
from responder.evidence.traces.evidence import trace_evidence
from responder.evidence.traces.model import Span


def row(name, expect, predicted, confidence, detected=True, detection_s=None, error=None) -> dict:
    return {"name": name, "expect": expect, "predicted": predicted, "confidence": confidence,
            "detected": detected, "detection_s": detection_s, "overhead": None, "kind": S.case_kind(expect),
            "correct": (set(predicted) <= set(expect)) if predicted else None, "abstain_reason": None,
            "trigger": "alert" if detected else "adhoc", "live_predicted": None, "error": error}


def suite_rows() -> list[dict]:
    """Six single-fault, two multi-fault and two no-fault cases whose counts are worked out below."""
    return [
        row("s1", ["network"], ["network"], 0.9, detection_s=30),
        row("s2", ["network"], ["dns"], 0.6, detection_s=40),  # wrong domain
        row("s3", ["dns"], ["dns"], 0.7, detection_s=50),
        row("s4", ["dns"], [], 0.3, detected=False),  # abstained, ad hoc trigger
        row("s5", ["app_cpu"], ["app_cpu"], 0.85, detection_s=60),
        row("s6", ["app_cpu"], ["app_cpu"], 0.95, detection_s=100),
        row("m1", ["network", "app_cpu"], ["network"], 0.7, detection_s=70),  # one of two: partial, not wrong
        row("m2", ["dns", "policy_layer"], ["dns", "provider_latency"], 0.82, detected=False),  # confident, wrong
        row("n1", [], [], 0.2, detected=False),  # no fault, abstained: right
        row("n2", [], ["app_memory"], 0.55, detected=True),  # no fault, a false alarm and a wrong verdict
    ]


def test_single_fault_precision_recall_f1_and_abstain_rate():
    card = S.aggregate(suite_rows(), "combined", traces_only_f1=0.3)
    single = card["scopes"]["single_fault"]
    assert (single["cases"], single["answered"], single["abstained"]) == (6, 5, 1)
    assert single["abstain_rate"] == pytest.approx(1 / 6)
    per = single["per_domain"]
    # network: s1 right, s2 named dns instead -> one TP, one FN
    assert {k: per["network"][k] for k in ("support", "tp", "fp", "fn", "abstained")} == \
        {"support": 2, "tp": 1, "fp": 0, "fn": 1, "abstained": 0}
    assert per["network"]["precision"] == 1.0 and per["network"]["recall"] == 0.5
    assert per["network"]["f1"] == pytest.approx(2 / 3)
    # dns: s3 right, s2's wrong "dns" is its false positive, s4 abstained (left out of P and R)
    assert (per["dns"]["tp"], per["dns"]["fp"], per["dns"]["fn"], per["dns"]["abstained"]) == (1, 1, 0, 1)
    assert per["dns"]["precision"] == 0.5 and per["dns"]["recall"] == 1.0
    assert per["dns"]["recall_with_abstain"] == 0.5  # the abstention counted as a miss
    assert per["dns"]["f1_with_abstain"] == pytest.approx(2 / 4)
    assert per["app_cpu"]["precision"] == per["app_cpu"]["recall"] == per["app_cpu"]["f1"] == 1.0
    # domains never expected nor named in this scope are undefined, and left out of the macro mean
    assert per["policy_layer"]["precision"] is None and per["policy_layer"]["f1"] is None
    macro = single["macro"]
    assert macro["precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert macro["recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert macro["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_multi_label_cases_count_once_per_domain():
    """Binary relevance: m1 (network+app_cpu, named network) is a TP for network and a FN for
    app_cpu; m2 (dns+policy_layer, named dns+provider_latency) a TP for dns, a FN for
    policy_layer and a FP for provider_latency. A no-fault case naming app_memory is its FP."""
    per = S.aggregate(suite_rows(), "combined", None)["scopes"]["all"]["per_domain"]
    assert (per["network"]["tp"], per["network"]["fn"]) == (2, 1)
    assert (per["app_cpu"]["tp"], per["app_cpu"]["fn"]) == (2, 1)
    assert (per["dns"]["tp"], per["dns"]["fp"], per["dns"]["abstained"]) == (2, 1, 1)
    assert (per["policy_layer"]["tp"], per["policy_layer"]["fn"], per["policy_layer"]["recall"]) == (0, 1, 0.0)
    assert per["policy_layer"]["precision"] is None  # never named
    assert (per["provider_latency"]["fp"], per["provider_latency"]["precision"]) == (1, 0.0)
    assert per["provider_latency"]["recall"] is None  # never expected
    assert (per["app_memory"]["fp"], per["app_memory"]["f1"]) == (1, 0.0)
    # f1_with_abstain over all cases: network .8, dns .667, app_cpu .8, three zeros
    macro = S.aggregate(suite_rows(), "combined", None)["scopes"]["all"]["macro"]
    assert macro["f1_with_abstain"] == pytest.approx((0.8 + 2 / 3 + 0.8) / 6)


def test_confusion_matrix_with_missed_and_abstain_columns():
    conf = S.aggregate(suite_rows(), "combined", None)["confusion"]
    assert conf["columns"][-2:] == ["missed", "abstain"] and conf["rows"][-1] == "no_fault"
    cells = {(r, c): n for r, counts in zip(conf["rows"], conf["matrix"]) for c, n in zip(conf["columns"], counts) if n}
    assert cells == {
        ("network", "network"): 2,  # s1, m1
        ("network", "dns"): 1,  # s2
        ("dns", "dns"): 2,  # s3, m2
        ("dns", "abstain"): 1,  # s4
        ("app_cpu", "app_cpu"): 2,  # s5, s6
        ("app_cpu", "missed"): 1,  # m1 named only its other true domain
        ("policy_layer", "provider_latency"): 1,  # m2: the wrong name charged to the missed domain
        ("no_fault", "abstain"): 1,  # n1
        ("no_fault", "app_memory"): 1,  # n2
    }


def test_an_extra_domain_with_nothing_missed_counts_against_every_expected_row():
    conf = S.confusion([row("a", ["network"], ["network", "dns"], 0.7),
                        row("b", ["network", "app_cpu"], ["network", "app_cpu", "dns"], 0.7)])
    cells = {(r, c): n for r, counts in zip(conf["rows"], conf["matrix"]) for c, n in zip(conf["columns"], counts) if n}
    assert cells == {("network", "network"): 2, ("network", "dns"): 2, ("app_cpu", "app_cpu"): 1,
                     ("app_cpu", "dns"): 1}


def test_reliability_table_and_ece():
    cal = S.aggregate(suite_rows(), "combined", None)["calibration"]
    assert cal["n"] == 8  # answered cases only
    filled = {(b["lo"], b["hi"]): (b["n"], b["mean_confidence"], b["precision"]) for b in cal["bins"] if b["n"]}
    assert filled.keys() == {(0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0)}
    assert filled[(0.5, 0.6)] == (1, pytest.approx(0.55), 0.0)  # n2: a no-fault case that named a domain
    assert filled[(0.6, 0.7)] == (1, pytest.approx(0.6), 0.0)  # s2
    assert filled[(0.7, 0.8)] == (2, pytest.approx(0.7), 1.0)  # s3, and m1 (partial but not wrong)
    assert filled[(0.8, 0.9)] == (2, pytest.approx(0.835), 0.5)  # s5 right, m2 wrong
    assert filled[(0.9, 1.0)] == (2, pytest.approx(0.925), 1.0)  # 1.0 itself would land here too
    expected = (1 * 0.55 + 1 * 0.6 + 2 * 0.3 + 2 * 0.335 + 2 * 0.075) / 8
    assert cal["ece"] == pytest.approx(expected)
    assert S.calibration([row("x", ["dns"], ["dns"], 1.0)])["bins"][-1]["n"] == 1


def test_detection_rate_percentiles_and_false_alarms():
    det = S.aggregate(suite_rows(), "combined", None)["detection"]
    assert (det["faulted_cases"], det["detected"], det["rate"]) == (8, 6, 0.75)
    # times 30, 40, 50, 60, 70, 100 s: linear interpolation between order statistics
    assert det["p50_s"] == pytest.approx(55.0)
    assert det["p95_s"] == pytest.approx(70 + 0.75 * 30)
    assert det["max_s"] == 100
    assert (det["false_alarms"], det["no_fault_cases"]) == (1, 2)
    assert S.percentile([], 0.5) is None and S.percentile([7.0], 0.95) == 7.0


def test_preliminary_verdicts_first_posts_and_what_the_capture_changed():
    rows = suite_rows()
    prelim = {"s1": (["network"], 12.0, 1.1), "s2": (["network"], 15.0, 0.9),  # right, then the capture wrong
              "s3": ([], 20.0, 1.4),  # abstained, then named
              "s5": (["app_cpu"], 25.0, 0.8)}  # confirmed
    for r in rows:
        named, first, receipt = prelim.get(r["name"], (None, None, None))
        r.update(preliminary_predicted=named, first_post_s=first, alert_to_first_post_s=receipt,
                 preliminary_correct=(set(named) <= set(r["expect"])) if named else None)
    det = S.aggregate(rows, "combined", None)["detection"]
    # first posts: 12, 15, 20, 25 (preliminary) and 60, 70 (s6, m1: the capture's detection_s)
    assert det["first_post_p50_s"] == pytest.approx(22.5)
    assert det["alert_to_first_post_p95_s"] == pytest.approx(1.1 + 0.85 * 0.3)
    assert det["alert_to_first_post_max_s"] == 1.4
    assert det["preliminary"] == {"n": 4, "changed": 2, "changed_rate": 0.5, "right_to_wrong": 1,
                                  "wrong_to_right": 0, "abstained_then_named": 1, "named_then_abstained": 0}


def test_early_warnings_per_case_and_in_the_detection_block():
    t0 = 1000.0
    base = {"fault_phase_started_at": t0, "fault_onset": t0 + 5, "fault_phase_ended_at": t0 + 180, "detected": True,
            "incident": {"created_at": t0 + 40}}

    def warned(*warnings):
        return base | {"early_warnings": [{"domain": d, "firing_since": t0 + at} for d, at in warnings]}

    assert S.early_warning_row(base, ["network"]) == {"early_warning_recorded": False}
    r = S.early_warning_row(warned(("app_cpu", -30), ("network", 25), ("dns", 30)), ["network"])
    assert r == {"early_warning_recorded": True, "early_warned": ["dns", "network"], "early_warning_wrong": ["dns"],
                 "warnable": True, "early_warning_s": 20.0, "early_warning_before_alert": True,
                 "fault_phase_s": 180.0, "early_warnings_fired": 2}
    late = S.early_warning_row(warned(("network", 60)), ["network"])
    assert late["early_warning_s"] == 55.0 and late["early_warning_before_alert"] is False
    assert S.early_warning_row(warned(), ["policy_layer"])["warnable"] is False  # the kernel cannot see it

    rows = suite_rows()
    extra = {"s1": r, "s2": late, "s3": S.early_warning_row(warned(), ["dns"]),
             "n1": S.early_warning_row(warned(("app_cpu", 10)), []), "n2": S.early_warning_row(warned(), [])}
    for row_ in rows:
        row_.update(extra.get(row_["name"], {"early_warning_recorded": False}))
    ew = S.aggregate(rows, "combined", None)["detection"]["early_warning"]
    assert ew == {"cases": 5, "warnable_faulted": 3, "warned": 2, "rate": pytest.approx(2 / 3),
                  "onset_to_warning_p50_s": pytest.approx(37.5), "onset_to_warning_p95_s": pytest.approx(20 + 0.95 * 35),
                  "detected_and_warned": 2, "before_alert": 1, "before_alert_rate": 0.5, "wrong_domain_cases": 1,
                  "no_fault_cases": 2, "on_no_fault_cases": 1, "no_fault_hours": 0.1,
                  "false_per_hour": pytest.approx(10.0)}  # one warning in two 3-minute fault phases


def test_anomalies_flagged_missed_and_on_controls():
    t0 = 1000.0
    rogue = {"kind": "egress_peer", "what": "127.0.0.1:4444", "name": "x.example"}
    case = {"fault_phase_started_at": t0, "faults": [{"kind": "rogue_egress", "anomaly": rogue}],
            "anomalies": [{"kind": "egress_peer", "what": "127.0.0.1:4444", "first_seen": t0 + 8},
                          {"kind": "executable", "what": "/usr/bin/curl", "first_seen": t0 + 9},
                          {"kind": "egress_peer", "what": "10.0.0.1:80", "first_seen": t0 - 50}]}  # before: not this case's
    assert S.anomaly_row(case) == {"anomaly_recorded": True, "anomalies_injected": 1, "anomalies_flagged": 1,
                                   "anomaly_flags_other": ["executable /usr/bin/curl"]}
    missed = S.anomaly_row(case | {"anomalies": []})
    assert (missed["anomalies_injected"], missed["anomalies_flagged"]) == (1, 0)
    assert S.anomaly_row({"faults": []}) == {"anomaly_recorded": False}
    rows = suite_rows()
    extra = {"n1": S.anomaly_row(case), "s1": missed,
             "n2": S.anomaly_row({"fault_phase_started_at": t0, "faults": [],
                                  "anomalies": [{"kind": "executable", "what": "/x", "first_seen": t0 + 1}]}),
             "s2": S.anomaly_row({"fault_phase_started_at": t0, "faults": [], "anomalies": []})}
    for r in rows:
        r.update(extra.get(r["name"], {"anomaly_recorded": False}))
    an = S.aggregate(rows, "combined", None)["detection"]["anomalies"]
    assert an == {"cases": 4, "injected": 2, "flagged": 1, "rate": 0.5, "flagged_without_injection": 1,
                  "without_injection": 2, "controls_flagged": 1, "controls": 1}


def test_only_the_services_warnings_and_flags_are_the_cases():
    """Another workload on the node (a container that ran beside the lab) is not the case's."""
    t0 = 1000.0
    svc, other = "cgroup:/llmslo-lab-svc-7", "container:" + "ab" * 32
    case = {"fault_phase_started_at": t0, "fault_onset": t0, "faults": [], "service_workload": svc,
            "early_warnings": [{"domain": "app_cpu", "firing_since": t0 + 9, "workload": other}],
            "anomalies": [{"kind": "executable", "what": "/sbin/ldconfig", "first_seen": t0 + 3, "workload": other},
                          {"kind": "executable", "what": "/tmp/x", "first_seen": t0 + 4, "workload": svc}]}
    assert S.anomaly_row(case)["anomaly_flags_other"] == ["executable /tmp/x"]
    assert S.early_warning_row(case, [])["early_warnings_fired"] == 0
    # A case recorded before the service's workload was kept: the lab scores one plain cgroup, the service.
    older = {k: v for k, v in case.items() if k != "service_workload"}
    assert S.anomaly_row(older)["anomaly_flags_other"] == ["executable /tmp/x"]
    assert S.early_warning_row(older | {"early_warnings": case["early_warnings"] + [
        {"domain": "network", "firing_since": t0 + 5, "workload": "cgroup:/elsewhere"}]}, [])["early_warned"] == ["network"]


def test_the_preliminary_verdict_is_reattributed_from_the_evidence_it_rested_on():
    """Posted at the alert's receipt (incident created at 2000.5) from the recorder's capture:
    kernel-only it names network like the capture's; its first post counts from the onset."""
    incident = stored_incident()
    incident["created_at"] = 2000.5
    incident["preliminary"] = {"verdict": {"domains": ["network"]}, "at": 2001.25, "received_at": 2000.5,
                               "first_at": 2001.25, "capture": incident["capture"],
                               "evidence": {"traces": None, "prometheus": None}}
    case = {"name": "loss", "expect": ["network"], "detected": True, "detection_s": 35.0, "incident": incident,
            "trigger": "alert", "finished_at": 2100.0}
    card = S.score([case], "kernel-only")
    row = card["cases"][0]
    assert row["preliminary_predicted"] == row["predicted"] == ["network"] and row["preliminary_correct"]
    assert row["alert_to_first_post_s"] == 0.75 and row["first_post_s"] == 2001.25 - (2040.0 - 35.0)
    assert card["detection"]["preliminary"]["changed"] == 0
    assert "Changed by the capture: 0 (0%)" in S.render_markdown(card)
    # a later alert of the same incident: its job waited for the running capture, and its post
    # updated a thread that had one; the first post still counts from the incident's first alert
    incident["preliminary"] |= {"at": 2012.0, "received_at": 2004.0, "first_at": 2001.25}
    assert S.score([case], "kernel-only")["cases"][0]["alert_to_first_post_s"] == 0.75


def held(r: dict, probability: float | None = None, hypotheses: list | None = None) -> dict:
    """A row of the held-out part, with its calibrated probability and ranked hypotheses."""
    top = hypotheses if hypotheses is not None else [{"domain": d, "score": r["confidence"]} for d in r["predicted"]]
    return {**r, "part": "held-out", "probability": probability, "score": r["confidence"], "hypotheses": top}


def test_targets_are_judged_on_the_held_out_rows_and_say_met_or_missed():
    rows = [held(r, probability=r["confidence"]) for r in suite_rows()]
    traces = [dict(r, predicted=[]) for r in rows]  # traces-only abstains on everything
    t = {x.name: x for x in S.targets(rows, "combined", traces, rows, held_out_ece=0.07)}
    assert len(t) == 10
    assert t["single faults: exact verdicts"].value == pytest.approx(4 / 6)  # s2 wrong, s4 abstained
    assert t["single faults: abstain rate"].value == pytest.approx(1 / 6) and t["single faults: abstain rate"].met is False
    assert t["single faults: precision over answered"].value == pytest.approx(4 / 5)
    assert t["multi-fault: every injected domain named"].value == 0.0  # m1 named one of two, m2 a wrong one
    wrong = t["multi-fault: a domain not injected named at calibrated confidence >= 0.8"]
    assert (wrong.value, wrong.met) == (1.0, False)  # m2 at 0.82
    assert t["controls (steady, restart): a fault domain named"].value == 1.0  # n2
    assert t["traffic surges named traffic"].met is None  # no surge among these rows
    assert t["expected calibration error of the calibrated confidence"].met is False
    lead = t["macro-F1 (abstain = miss) above traces-only"]
    assert lead.value == pytest.approx(S.scope_summary(rows)["macro"]["f1_with_abstain"] - 0.0) and lead.met
    kernel = t["kernel-only precision, lowest of network, dns, app_cpu, app_memory, provider_throttling"]
    assert kernel.value == 0.0  # app_memory: named only on n2, a no-fault case (dns: 0.5)
    # The ablation targets are judged in combined mode only.
    other = {x.name: x for x in S.targets(rows, "kernel-only", traces, rows, held_out_ece=0.01)}
    assert other["macro-F1 (abstain = miss) above traces-only"].met is None
    assert other["expected calibration error of the calibrated confidence"].met is None

    good = [held(row(f"{d}-{i}", [d], [d], 0.9), 0.9)
            for d in ("network", "dns", "app_cpu", "traffic") for i in range(4)]
    good += [held(row("m", ["network", "dns"], ["network", "dns"], 0.85), 0.85),
             held(row("n", [], [], 0.4, detected=False))]
    t = S.targets(good, "combined", [dict(r, predicted=[]) for r in good], good, held_out_ece=0.02)
    assert all(x.met for x in t), [x for x in t if not x.met]


def test_ranking_and_risk_coverage_of_the_hypotheses():
    rows = [
        held(row("a", ["network"], ["network"], 0.9)),
        held(row("b", ["dns"], [], 0.4), hypotheses=[{"domain": "app_cpu", "score": 0.4}, {"domain": "dns", "score": 0.38}]),
        held(row("c", ["dns"], ["network"], 0.7), hypotheses=[{"domain": "network", "score": 0.7}]),
        held(row("n", [], [], 0.1)),
    ]
    rk = S.ranking(rows)
    assert (rk["cases"], rk["top1"], rk["top2"]) == (3, pytest.approx(1 / 3), pytest.approx(2 / 3))
    rc = S.risk_coverage(rows)
    # most confident first: a (right), c (wrong), b (wrong)
    assert rc["points"] == [[0.3333, 1.0], [0.6667, 0.5], [1.0, 0.3333]]
    assert rc["operating"] == [pytest.approx(2 / 3), 0.5]


@pytest.mark.slow
def test_write_produces_json_markdown_and_png_charts(tmp_path):
    card = S.aggregate(suite_rows(), "combined", traces_only_f1=0.3)
    rows = [held(r, probability=r["confidence"]) for r in suite_rows()]
    card["targets"] = [t.to_dict() for t in S.targets(rows, "combined", rows, rows, 0.1)]
    card["held_out"] = {"ranking": S.ranking(rows), "risk_coverage": S.risk_coverage(rows)}
    paths = S.write(card, tmp_path / "out")
    assert [p.name for p in paths] == list(S.SCORECARD_FILES)
    assert json.loads(paths[0].read_text())["mode"] == "combined"
    for png in paths[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    md = paths[1].read_text()
    assert "## Targets (held-out part)" in md and "| single faults: exact verdicts | >= 90% |" in md
    assert "m2: named dns, provider_latency at 0.82" in md
    assert "![confusion](confusion.png)" in md and "![reliability](reliability.png)" in md


# --- re-attribution from a stored incident -------------------------------------------------------

SERVICE = "rag-api"


def spans(start_s: float, n: int, policy_ms: float) -> list[Span]:
    """RAG requests: server span, guardrail, retrieval and chat child spans."""
    rng, out = random.Random(3), []
    for i in range(n):
        t = int((start_s + i * 0.1) * 1e9)
        tid, root = f"{int(start_s) * 10_000 + i:032x}", f"{i * 4 + 1:016x}"
        j = lambda ms: int(ms * (0.8 + 0.4 * rng.random()) * 1e6)  # noqa: E731
        out += [
            Span(tid, root, None, SERVICE, "POST /v1/answer", "server", t, t + j(400),
                 attributes={"http.response.status_code": 200}),
            Span(tid, f"{i * 4 + 2:016x}", root, SERVICE, "apply_guardrail input", "internal", t, t + j(policy_ms),
                 attributes={"gen_ai.operation.name": "apply_guardrail"}),
            Span(tid, f"{i * 4 + 3:016x}", root, SERVICE, "SELECT lab_retrieve", "client", t, t + j(5),
                 attributes={"db.system.name": "postgresql", "db.operation.name": "SELECT",
                             "server.address": "127.0.0.1", "server.port": 5432}),
            Span(tid, f"{i * 4 + 4:016x}", root, SERVICE, "chat gpt-4o-mini", "client", t, t + j(300),
                 attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                             "gen_ai.request.model": "gpt-4o-mini", "server.address": "api.provider.lab"}),
        ]
    return out


def stored_incident() -> dict:
    """An incident as GET /api/incidents/{id} returns it: the kernel saw retransmits (network),
    the traces saw the guardrail slow down (policy_layer, which the kernel cannot see)."""
    def probes(retrans_per_s: float, window: float) -> dict[str, ProbeResult]:
        return {"tcp_retrans": ProbeResult("tcp_retrans", window, counters={"retransmits": retrans_per_s * window}),
                "runq_latency": ProbeResult("runq_latency", window,
                                            histograms={"runq_wait": Histogram("us", {16: int(100 * window)})})}

    cap = CaptureResult(id="cap-1", node="lab", target=CaptureTarget(pids=[4242]), started_at=2000.0,
                        ended_at=2010.0, incident=probes(4.0, 10.0), baseline=probes(0.1, 60.0),
                        baseline_note="flight recorder, 60s",
                        cost=CaptureCost(bpf_run_time_ns=12_500_000, bpf_run_count=900, events=450, agent_cpu_s=0.4))
    traces = trace_evidence(spans(1000, 200, policy_ms=4), spans(2000, 200, policy_ms=150), SERVICE)
    traces.update(reachable=True, error=None, backend="builtin", service=SERVICE)
    incident = {"id": "inc-1", "status": "resolved", "group_key": "{}:{alertname=\"LLMLatencyBurn\"}",
                "verdict": {"domains": ["network"], "confidence": 0.7, "hypotheses": [], "abstain_reason": None},
                "capture": cap.to_dict(), "evidence": {"prometheus": None, "traces": traces},
                "attributed_at": 2040.0, "source": "alert"}
    return json.loads(json.dumps(incident))  # exactly what survives the JSON round trip


def test_modes_reattribute_the_stored_capture_and_traces():
    incident = stored_incident()
    case = {"name": "loss-and-guardrail", "expect": ["network", "policy_layer"], "detected": True,
            "detection_s": 35.0, "incident": incident, "trigger": "alert", "finished_at": 2100.0}
    kernel = S.score([case], "kernel-only")["cases"][0]
    traces = S.score([case], "traces-only")["cases"][0]
    combined = S.score([case], "combined")["cases"][0]
    assert kernel["predicted"] == ["network"], kernel
    assert traces["predicted"] == ["policy_layer"], traces
    both = attribute(CaptureResult.from_dict(incident["capture"]), incident["evidence"]["traces"])
    assert combined["predicted"] == both.domains and set(both.domains) <= {"network", "policy_layer"}
    assert combined["live_predicted"] == ["network"]  # what the responder said during the run is kept
    assert combined["overhead"]["bpf_run_time_ns"] == 12_500_000
    assert (combined["detected"], combined["detection_s"], combined["kind"]) == (True, 35.0, "multi_fault")


def test_a_case_without_an_incident_counts_as_an_abstention(tmp_path):
    cases_dir = tmp_path / "cases"
    cases_dir.mkdir()
    (cases_dir / "b.json").write_text(json.dumps({"name": "b", "expect": ["dns"], "detected": False,
                                                  "incident": None, "error": "no verdict within 120 s",
                                                  "finished_at": 5.0}))
    (cases_dir / "a.json").write_text(json.dumps({"name": "a", "expect": ["network", "policy_layer"],
                                                  "detected": True, "detection_s": 35.0,
                                                  "incident": stored_incident(), "finished_at": 9.0}))
    cases = S.load_cases(tmp_path)
    assert [c["name"] for c in cases] == ["b", "a"]  # the order they finished in
    card = S.score(cases, "kernel-only")
    b = card["cases"][0]
    assert b["predicted"] == [] and b["abstain_reason"] == "no verdict: no verdict within 120 s"
    assert card["errors"] == [{"name": "b", "error": "no verdict within 120 s"}]
    assert card["scopes"]["single_fault"]["abstain_rate"] == 1.0
    (cases_dir / "c.json").write_text("{not json")
    with pytest.raises(S.ScorecardError, match="c.json"):
        S.load_cases(tmp_path)


# --- the split and the calibration fit (lab.calibrate) -----------------------------------------------

def test_the_split_is_by_seed_stable_and_near_its_share():
    from lab import calibrate

    cases = [{"name": f"x{i}", "seed": i} for i in range(2000)]
    parts = [calibrate.split_of(c) for c in cases]
    assert parts == [calibrate.split_of(dict(c, name="renamed", expect=["dns"])) for c in cases]  # the seed decides
    assert 0.26 < parts.count("held-out") / len(parts) < 0.34
    folds = [calibrate.fold_of(c) for c in cases if calibrate.split_of(c) == "training"]
    assert set(folds) == set(range(calibrate.FOLDS)) and min(folds.count(k) for k in range(5)) > 200
    # a case without a seed is split by its scenario's seed, else by its name
    assert calibrate.split_of({"name": "n", "scenario": {"seed": 7}}) == calibrate.split_of({"name": "m", "seed": 7})


def test_the_isotonic_fit_matches_scikit_learn_and_keeps_each_levels_support():
    from sklearn.isotonic import IsotonicRegression

    from lab import calibrate

    rng = random.Random(5)
    points = []
    for _ in range(300):
        s = rng.random()
        points.append((round(s, 3), rng.random() < s))  # right with probability = score: calibrated
    curve = calibrate.fit_curve(points)
    xs = sorted(p[0] for p in points)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        [p[0] for p in points], [float(p[1]) for p in points])
    for x in xs:
        assert curve.probability(x) == pytest.approx(float(ref.predict([x])[0]), abs=1e-3)
    assert curve.n == 300 and sum(lv.right for lv in curve.levels) == sum(1 for p in points if p[1])
    assert calibrate.fit_curve(points[:5]) is None
    # on its own training points a calibrated score scores a low ECE; a score that says 0.9 when
    # right half of the time does not
    assert calibrate.ece([(s, r) for s, r in points]) < 0.1
    assert calibrate.ece([(0.9, i % 2 == 0) for i in range(100)]) == pytest.approx(0.4)
    assert calibrate.ece([]) is None


def test_a_fault_the_requests_did_not_feel_is_left_out_of_the_fault_targets():
    def load(ok: float, p90: float) -> dict:
        return {"ok_ratio": ok, "latency_s": {"p90": p90}}

    calm = {"baseline": load(1.0, 0.30), "faults": load(1.0, 0.31)}
    case = {"expect": ["app_memory"], "detected": False, "load": calm}
    assert not S.felt(case)
    assert S.felt(dict(case, detected=True))  # an alert fired: felt
    assert S.felt(dict(case, load={"baseline": load(1.0, 0.30), "faults": load(0.97, 0.31)}))  # errors
    assert S.felt(dict(case, load={"baseline": load(1.0, 0.30), "faults": load(1.0, 0.40)}))  # slower
    assert S.felt(dict(case, load={}))  # the runner measured nothing: counted
    # An unfelt case abstained on is no miss of the fault targets; a felt one is.
    rows = [held(dict(row("felt", ["dns"], ["dns"], 0.8), felt=True), 0.8),
            held(dict(row("unfelt", ["app_memory"], [], 0.0, detected=False), felt=False))]
    t = {x.name: x for x in S.targets(rows, "combined", None, None, held_out_ece=None)}
    assert t["single faults: exact verdicts"].value == 1.0 and t["single faults: abstain rate"].value == 0.0
    rows[1]["felt"] = True
    t = {x.name: x for x in S.targets(rows, "combined", None, None, held_out_ece=None)}
    assert t["single faults: abstain rate"].value == 0.5
