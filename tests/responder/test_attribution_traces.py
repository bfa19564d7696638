"""Attribution from trace evidence: spans in, per-dependency evidence (responder.evidence.traces.evidence),
then the verdict, alone or beside a kernel capture."""
from __future__ import annotations

import random

from responder.attribution.engine import attribute
from responder.evidence.traces.evidence import trace_evidence
from responder.evidence.traces.model import Span

SERVICE = "rag-api"


class Traffic:
    """RAG requests: server span -> guardrail -> retrieval (postgres) -> chat call to the provider."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def ids(self) -> tuple[str, str]:
        self.n += 1
        return f"{self.n:032x}", f"{self.n:016x}"

    def request(self, t_ns: int, llm_ms: float = 300, db_ms: float = 5, policy_ms: float = 4,
                llm_error: str | None = None, db_error: bool | str = False, blocked: bool = False) -> list[Span]:
        trace_id, root = self.ids()
        jitter = lambda ms: int(ms * (0.8 + 0.4 * self.rng.random()) * 1e6)  # noqa: E731
        spans = [Span(trace_id, root, None, SERVICE, "POST /v1/answer", "server", t_ns, t_ns + jitter(llm_ms + 50),
                      attributes={"http.response.status_code": 200})]
        t = t_ns
        pol = {"gen_ai.operation.name": "apply_guardrail", "gen_ai.guardrail.name": "input"}
        if blocked:
            pol["gen_ai.guardrail.result.value"] = "GUARDRAIL_INTERVENED"
        spans.append(Span(trace_id, self.ids()[1], root, SERVICE, "apply_guardrail input", "internal", t,
                          t + jitter(policy_ms), attributes=pol))
        db = {"db.system.name": "postgresql", "db.operation.name": "SELECT", "server.address": "db", "server.port": 5432}
        if db_error:  # True: a constraint violation; a string: that error type
            db["error.type"] = db_error if isinstance(db_error, str) else "23505"
        spans.append(Span(trace_id, self.ids()[1], root, SERVICE, "SELECT chunks", "client", t, t + jitter(db_ms),
                          status="error" if db_error else "unset", attributes=db))
        llm = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "m",
               "server.address": "api.provider.test"}
        if llm_error:
            llm["error.type"] = llm_error
        spans.append(Span(trace_id, self.ids()[1], root, SERVICE, "chat m", "client", t, t + jitter(llm_ms),
                          status="error" if llm_error else "unset", attributes=llm))
        return spans

    def window(self, start_s: float, n: int, every_s: float = 0.1, **kw) -> list[Span]:
        out: list[Span] = []
        for i in range(n):
            out += self.request(int((start_s + i * every_s) * 1e9), **kw)
        return out


def evidence(incident_kw: dict, baseline_kw: dict | None = None, n: int = 200) -> dict:
    tr = Traffic()
    ev = trace_evidence(tr.window(1000, n, **(baseline_kw or {})), tr.window(2000, n, **incident_kw), SERVICE)
    ev.update(reachable=True, error=None, backend="builtin", service=SERVICE)
    return ev


def test_provider_429s_in_traces_name_provider_throttling():
    tr = Traffic()
    inc = []
    for i in range(200):
        inc += tr.request(int((2000 + i * 0.1) * 1e9), llm_error="429" if i % 4 == 0 else None)
    ev = trace_evidence(tr.window(1000, 200), inc, SERVICE)
    ev.update(reachable=True)
    v = attribute(None, traces=ev, trace_link=lambda tid: f"http://r/api/traces/{tid}")
    assert v.domains == ["provider_throttling"], v.to_dict()
    top = v.hypotheses[0].supporting[0]
    assert top.source == "trace" and top.incident == 0.25 and top.link.startswith("http://r/api/traces/")


def test_slow_provider_alone_is_provider_latency_but_every_dependency_slower_is_network():
    v = attribute(None, traces=evidence({"llm_ms": 1500}))
    assert v.domains == ["provider_latency"], v.to_dict()
    v = attribute(None, traces=evidence({"llm_ms": 1500, "db_ms": 60}))
    assert v.domains == ["network"], v.to_dict()


def test_retrieval_and_policy_domains_from_their_spans():
    assert attribute(None, traces=evidence({"db_ms": 80})).domains == ["retrieval_backend"]
    assert attribute(None, traces=evidence({"db_error": True})).domains == ["retrieval_backend"]
    # The kernel cannot see the policy layer: only traces can name it.
    assert attribute(None, traces=evidence({"policy_ms": 120})).domains == ["policy_layer"]
    assert attribute(None, traces=evidence({"blocked": True})).domains == ["policy_layer"]


def test_unchanged_traces_abstain_and_unreachable_traces_say_why():
    v = attribute(None, traces=evidence({}))
    assert v.abstained and v.hypotheses, v.to_dict()
    v = attribute(None, traces={"reachable": False, "error": "tempo at http://t:3200: could not connect"},
                  gaps=["the capture failed: agent down"])
    assert v.abstained
    assert "agent down" in v.abstain_reason and "tempo at http://t:3200" in v.abstain_reason


def test_too_few_calls_give_no_trace_signal():
    v = attribute(None, traces=evidence({"llm_ms": 1500}, n=5))
    assert v.abstained and not v.hypotheses


def test_evidence_windows_start_at_the_burn_and_stay_bounded():
    from responder.pipeline.gather import MAX_INCIDENT_WINDOW_S, evidence_windows

    base, inc = evidence_windows(burn_start=900.0, end=1000.0, duration_s=10, baseline_s=60)
    assert inc == (900.0, 1000.0) and base == (840.0, 900.0)
    # A burn that began just now still gets a capture-long incident window.
    base, inc = evidence_windows(burn_start=998.0, end=1000.0, duration_s=10, baseline_s=60)
    assert inc == (990.0, 1000.0) and base == (930.0, 990.0)
    # An hour-old incident compares its last minutes, not the whole hour.
    _, inc = evidence_windows(burn_start=1000.0 - 3600, end=1000.0, duration_s=10, baseline_s=60)
    assert inc == (1000.0 - MAX_INCIDENT_WINDOW_S, 1000.0)
    _, inc = evidence_windows(burn_start=None, end=1000.0, duration_s=10, baseline_s=60)
    assert inc == (990.0, 1000.0)


def test_baseline_ends_where_the_burn_under_investigation_began():
    from responder.pipeline.gather import baseline_end
    from responder.store.base import Incident

    def alert(start: str, status: str = "firing") -> dict:
        return {"status": status, "startsAt": start, "labels": {}}

    inc = Incident(id="i", group_key="g", status="firing", created_at=0, updated_at=0,
                   alerts=[alert("2026-11-27T10:00:00+00:00"), alert("2026-11-27T10:05:00+00:00"),
                           alert("2026-11-27T09:00:00+00:00", status="resolved")])
    assert baseline_end(inc) == 1795773600.0  # 10:00, the earliest firing alert
    # Investigated at 10:02; a page alert joined at 10:05 while a long-window alert from the
    # first burn still fires: the new investigation's baseline ends at 10:05.
    inc.attributed_at = 1795773600.0 + 120
    assert baseline_end(inc) == 1795773600.0 + 300


def test_a_slower_provider_call_is_explained_away_by_kernel_packet_loss():
    from tests.responder.test_attribution import BASE_S, INC_S, capture, retrans

    traces = evidence({"llm_ms": 1500})
    assert attribute(None, traces=traces).domains == ["provider_latency"]
    lossy = capture([retrans(4.0, INC_S, top=[{"peer": "10.0.0.7:443", "count": 40}])], [retrans(0.05, BASE_S)])
    v = attribute(lossy, traces=traces)
    assert v.domains == ["network"], v.to_dict()
    slow = next(h for h in v.hypotheses if h.domain == "provider_latency")
    assert "likely a symptom" in slow.supporting[0].summary and slow.confidence < 0.5


def test_a_throttling_provider_is_slow_because_of_the_throttling_not_a_second_cause():
    tr = Traffic()
    inc = []
    for i in range(200):  # retries after retry-after make the throttled calls slow, too
        inc += tr.request(int((2000 + i * 0.1) * 1e9), llm_ms=2500, llm_error="429" if i % 3 == 0 else None)
    ev = trace_evidence(tr.window(1000, 200), inc, SERVICE)
    ev.update(reachable=True)
    v = attribute(None, traces=ev)
    assert v.domains == ["provider_throttling"], v.to_dict()
    slow = next(h for h in v.hypotheses if h.domain == "provider_latency")
    assert "throttled" in slow.supporting[0].summary


def test_cpu_starvation_explains_away_slower_and_timed_out_calls_in_traces_and_kernel():
    from tests.responder.test_attribution import BASE_S, INC_S, capture, hyp, runq, tls

    tr = Traffic()
    inc = []
    for i in range(200):  # every call slower, a quarter of the queries timing out
        inc += tr.request(int((2000 + i * 0.1) * 1e9), llm_ms=4000, db_ms=3000,
                          db_error="TimeoutError" if i % 4 == 0 else False)
    ev = trace_evidence(tr.window(1000, 200), inc, SERVICE)
    ev.update(reachable=True)
    # Traces alone cannot see the CPU: they blame the calls that got slower.
    assert "app_cpu" not in attribute(None, traces=ev).domains
    starved = capture([runq(400, 600, INC_S), tls(0, 0, INC_S, {4194304: 60})],
                      [runq(6000, 60, BASE_S), tls(0, 0, BASE_S, {262144: 300})])
    v = attribute(starved, traces=ev)
    assert v.domains == ["app_cpu"], v.to_dict()
    timeouts = hyp(v, "retrieval_backend").supporting[0].summary
    assert "100% timeouts" in timeouts and "likely a symptom of app_cpu" in timeouts
    assert "likely a symptom of app_cpu" in hyp(v, "provider_latency").supporting[0].summary  # kernel TTFB
    # Explained symptoms do not add up: two slower dependencies count as one.
    assert hyp(v, "network").confidence < hyp(v, "app_cpu").confidence - 0.15


def test_non_timeout_retrieval_errors_are_a_cause_not_explained_away():
    from tests.responder.test_attribution import BASE_S, INC_S, capture, hyp, runq

    ev = evidence({"db_error": True})
    starved = capture([runq(400, 600, INC_S)], [runq(6000, 60, BASE_S)])
    v = attribute(starved, traces=ev)
    errors = hyp(v, "retrieval_backend").supporting[0].summary
    assert "symptom" not in errors and "timeouts" not in errors
    assert set(v.domains) == {"app_cpu", "retrieval_backend"}, v.to_dict()


def test_a_slow_lookup_is_a_symptom_of_starvation_but_explains_slower_calls_on_its_own():
    from capture.schemas import Histogram, ProbeResult
    from tests.responder.test_attribution import BASE_S, INC_S, capture, hyp, runq

    def lookups(slow_us: int, window: float, n: int) -> ProbeResult:
        return ProbeResult("dns", window, counters={"lookups": n, "failures": 0},
                           histograms={"latency": Histogram("us", {slow_us: n})})

    traces = evidence({"llm_ms": 2000})
    slow_dns = (lookups(2_097_152, INC_S, 40), lookups(4096, BASE_S, 240))
    # Alone, the slow lookup is on the way to the provider call: dns, and the call a symptom.
    v = attribute(capture([slow_dns[0]], [slow_dns[1]]), traces=traces)
    assert v.domains == ["dns"], v.to_dict()
    assert "likely a symptom of dns" in hyp(v, "provider_latency").supporting[0].summary
    # With the process starved of CPU, the slow lookup is one more symptom of that.
    starved = capture([slow_dns[0], runq(400, 600, INC_S)], [slow_dns[1], runq(6000, 60, BASE_S)])
    v = attribute(starved, traces=traces)
    assert v.domains == ["app_cpu"], v.to_dict()
    assert "likely a symptom of app_cpu" in hyp(v, "dns").supporting[0].summary


def test_a_surge_in_requests_is_traffic_and_explains_the_cpu_waits_it_causes():
    from tests.responder.test_attribution import BASE_S, INC_S, capture, hyp, runq

    tr = Traffic()
    # 10 requests/s in the baseline; 30/s in the incident, every call slower for it
    surge = trace_evidence(tr.window(1000, 600), tr.window(2000, 900, every_s=1 / 30, llm_ms=900, db_ms=40), SERVICE)
    surge.update(reachable=True)
    starved = capture([runq(400, 600, INC_S)], [runq(6000, 60, BASE_S)])
    v = attribute(starved, traces=surge)
    assert v.domains == ["traffic"], v.to_dict()
    demand = hyp(v, "traffic").supporting[0]
    assert demand.signal == "trace.server.request_rate" and "requests served rose" in demand.summary
    assert 9.9 < demand.baseline < 10.1 and 28.5 < demand.incident < 31
    cpu = hyp(v, "app_cpu").supporting[0]
    assert "likely demand" in cpu.summary and hyp(v, "app_cpu").confidence < 0.34  # 1.0 x 0.25 explained
    # Traces alone name it too; the kernel alone cannot see demand, and names the CPU.
    assert attribute(None, traces=surge).domains == ["traffic"]
    assert attribute(starved).domains == ["app_cpu"]
    # The same starvation at a steady rate is a CPU fault, not demand.
    steady = trace_evidence(tr.window(1000, 600), tr.window(2000, 300, llm_ms=900, db_ms=40), SERVICE)
    steady.update(reachable=True)
    v = attribute(starved, traces=steady)
    assert v.domains == ["app_cpu"] and hyp(v, "traffic").confidence == 0.0


def test_a_small_or_slight_rise_in_requests_is_not_demand():
    tr = Traffic()
    slight = trace_evidence(tr.window(1000, 600), tr.window(2000, 390, every_s=1 / 13), SERVICE)  # x1.3
    assert not attribute(None, traces=dict(slight, reachable=True)).domains
    quiet = trace_evidence(tr.window(1000, 30, every_s=2.0), tr.window(2000, 30, every_s=1.0), SERVICE)  # 0.5 -> 1/s
    v = attribute(None, traces=dict(quiet, reachable=True))
    assert "traffic" not in v.domains


def test_each_dependency_names_the_peers_its_calls_went_to():
    from responder.model.evidence import TraceEvidence

    tr = Traffic()
    spans = tr.window(1000, 20)
    for s in spans[:4]:  # a connected address, when a span says it, is the peer the kernel sees
        if s.attributes.get("db.system.name"):
            s.attributes.update({"network.peer.address": "10.0.0.7", "network.peer.port": 5432})
    ev = TraceEvidence.read(dict(trace_evidence(spans, tr.window(2000, 20), SERVICE), reachable=True))
    deps = {d.kind: d for d in ev.dependencies}
    assert deps["retrieval"].baseline.peers == {"db:5432": 19, "10.0.0.7:5432": 1}
    assert deps["retrieval"].incident.peers == {"db:5432": 20}
    assert deps["llm"].incident.peers == {"api.provider.test": 20}  # no port on those spans
    assert deps["policy"].incident.peers == {}  # in-process: no peer


def _answers(window: float, *pairs: str):
    """A dns probe result whose lookups returned these "address host" answers."""
    from capture.schemas import ProbeResult

    return ProbeResult("dns", window, top={"answers": [{"peer": p, "count": 30} for p in pairs]})


def test_loss_on_one_dependencys_path_explains_only_that_dependencys_slowness():
    from tests.responder.test_attribution import BASE_S, INC_S, capture, hyp, retrans

    # The provider and the database both slower; the kernel lost packets to the provider only.
    traces = evidence({"llm_ms": 1500, "db_ms": 400})
    assert attribute(None, traces=traces).domains == ["network"]  # traces alone: every call slower is the path
    to_provider = capture([retrans(4.0, INC_S, top=[{"peer": "10.0.0.9:443", "count": 40}]),
                           _answers(INC_S, "10.0.0.9 api.provider.test")], [retrans(0.05, BASE_S)])
    v = attribute(to_provider, traces=traces)
    assert v.domains == ["network", "retrieval_backend"], v.to_dict()
    db = hyp(v, "retrieval_backend").supporting[0]
    assert db.signal == "trace.retrieval.p90" and "likely a symptom" not in db.summary
    llm = next(e for e in hyp(v, "network").supporting if e.signal.startswith("trace.llm"))
    assert llm.summary.startswith("llm openai")  # the provider's slowness is the lossy path's
    loss = next(e for e in hyp(v, "network").supporting if e.signal == "tcp_retrans.retransmits_per_s")
    assert loss.summary.endswith("(top peer 10.0.0.9:443 ×40); the path to llm openai")
    # The same loss on the database's path explains the database's slowness; the provider's
    # slower calls are not on it: a provider five times slower that the loss cannot account for
    # is a finding of its own, a provider 40% slower too little to name.
    to_db = capture([retrans(4.0, INC_S, top=[{"peer": "10.0.0.7:5432", "count": 40}]),
                     _answers(INC_S, "10.0.0.9 api.provider.test", "10.0.0.7 db")], [retrans(0.05, BASE_S)])
    v = attribute(to_db, traces=traces)
    assert v.domains == ["network", "provider_latency"], v.to_dict()
    assert "likely a symptom" not in hyp(v, "provider_latency").supporting[0].summary
    assert "each resting on a cause of its own" in v.decision
    assert attribute(to_db, traces=evidence({"llm_ms": 9000, "db_ms": 400})).domains == ["network", "provider_latency"]
    assert attribute(to_db, traces=evidence({"llm_ms": 420, "db_ms": 400})).domains == ["network"]
    # Peers the kernel could not name: as before, the loss explains every slower call.
    anywhere = capture([retrans(4.0, INC_S)], [retrans(0.05, BASE_S)])
    assert attribute(anywhere, traces=traces).domains == ["network"]


def test_peers_match_by_address_by_resolved_name_or_by_port_alone():
    from capture.attribution import peers
    from capture.schemas import CaptureResult, CaptureTarget, ProbeResult

    assert peers.split("10.0.0.7:5432") == ("10.0.0.7", "5432")
    assert peers.split("[::1]:53") == ("::1", "53") and peers.split("db") == ("db", None)
    hosts = {"api.provider.test": {"10.0.0.9"}}
    assert peers.same("10.0.0.9:443", "api.provider.test:443", hosts)
    assert peers.same("10.0.0.9:443", "api.provider.test", hosts)
    assert not peers.same("10.0.0.8:443", "api.provider.test:443", hosts)  # resolved elsewhere
    assert not peers.same("10.0.0.9:443", "10.0.0.9:8443", hosts)  # other port
    assert not peers.same("10.0.0.9:443", "10.0.0.5:443", hosts)  # other address
    assert peers.same("10.0.0.9:5432", "db:5432", hosts)  # a name with no answer: the port decides
    assert not peers.same("10.0.0.9:5432", "db:6432", hosts)
    assert peers.on_path(None, frozenset({"db:1"}), hosts) and peers.on_path(frozenset({"x:1"}), None, hosts)
    cap = CaptureResult(id="c", node="n", target=CaptureTarget(pids=[1]), started_at=0, ended_at=1,
                        incident={"dns": _answers(1, "10.0.0.9 api.provider.test")},
                        baseline={"dns": _answers(1, "10.0.0.10 api.provider.test", "10.0.0.7 db")})
    assert peers.hosts_from(cap) == {"api.provider.test": {"10.0.0.9", "10.0.0.10"}, "db": {"10.0.0.7"}}
    r = ProbeResult("tcp_retrans", 1, top={"peers": [{"peer": "unknown", "count": 3}, {"peer": "10.0.0.7:5432",
                                                                                      "count": 2}]})
    assert peers.kernel_peers(r) == frozenset({"10.0.0.7:5432"})
    assert peers.kernel_peers(ProbeResult("tcp_retrans", 1)) is None


def _flow(window: float, rtt_ms: dict[str, float], samples: int = 40):
    """A tcp_flow result whose sampled sRTT per peer averaged ``rtt_ms``."""
    from capture.schemas import ProbeResult

    return ProbeResult("tcp_flow", window, top={
        "rtt_sum_us": [{"peer": p, "count": int(ms * 1000 * samples)} for p, ms in rtt_ms.items()],
        "rtt_samples": [{"peer": p, "count": samples} for p in rtt_ms]})


def test_a_longer_round_trip_on_a_path_explains_its_calls_only_up_to_a_few_round_trips():
    from tests.responder.test_attribution import BASE_S, INC_S, capture, hyp

    provider, db = "10.0.0.9:443", "10.0.0.7:5432"
    answers = _answers(INC_S, "10.0.0.9 api.provider.test", "10.0.0.7 db")
    base = _flow(BASE_S, {provider: 0.2, db: 0.1})
    queued = _flow(INC_S, {provider: 130.0, db: 0.1})  # a queue on the provider's path only
    # The provider's calls 400 ms slower: about three of the path's added round trips. The network.
    v = attribute(capture([queued, answers], [base]), traces=evidence({"llm_ms": 700}))
    assert v.domains == ["network"], v.to_dict()
    rtt = hyp(v, "network").supporting[0]
    assert rtt.signal == "tcp_flow.peer_srtt_ms" and rtt.incident == 130.0
    assert f"on 1 of 2 peers: {provider} 0.2 → 130.0 ms" in rtt.summary
    assert rtt.summary.endswith("; the path to llm openai")
    assert "likely a symptom of network" in hyp(v, "provider_latency").supporting[0].summary
    # 2.7 s slower is far more than the path's 130 ms can account for: the provider is slow too.
    v = attribute(capture([queued, answers], [base]), traces=evidence({"llm_ms": 3000}))
    assert "likely a symptom" not in hyp(v, "provider_latency").supporting[0].summary
    assert hyp(v, "provider_latency").confidence > 0.55
    # The round trip flat while the first byte comes later: the provider's own latency, and the
    # flat sRTT argues against the path.
    v = attribute(capture([_flow(INC_S, {provider: 0.3, db: 0.1}), answers], [base]), traces=evidence({"llm_ms": 3000}))
    assert v.domains == ["provider_latency"], v.to_dict()
    flat = next(e for e in hyp(v, "network").contradicting if e.signal == "tcp_flow.peer_srtt_ms")
    assert "flat on all 2 peers" in flat.summary
    # A slow server lifts its clients' sRTT by up to the delayed-ACK timer: 35 ms is not the path.
    v = attribute(capture([_flow(INC_S, {provider: 35.0, db: 0.1}), answers], [base]), traces=evidence({"llm_ms": 3000}))
    assert v.domains == ["provider_latency"], v.to_dict()
    # Too few samples of a peer in either window: no signal, and the gap says why.
    thin = attribute(capture([_flow(INC_S, {provider: 130.0}, samples=2), answers], [_flow(BASE_S, {provider: 0.2}, 2)]),
                     traces=evidence({"llm_ms": 700}))
    assert not any(e.signal == "tcp_flow.peer_srtt_ms" for h in thin.hypotheses for e in h.supporting + h.contradicting)


def _sent(window: float, bytes_per_s: dict[str, float]):
    """A tcp_flow result: the bytes each peer acknowledged, per second of ``window``."""
    from capture.schemas import ProbeResult

    return ProbeResult("tcp_flow", window, top={
        "tx_bytes_peers": [{"peer": p, "count": int(b * window)} for p, b in bytes_per_s.items()]})


def test_retransmits_are_loss_only_at_a_share_of_what_was_sent():
    from capture.attribution.rules import FULL_SEGMENT_BYTES
    from tests.responder.test_attribution import BASE_S, INC_S, capture, hyp, retrans

    provider, quiet = "10.0.0.9:443", "127.0.0.1:4318"
    tr = Traffic()
    # A surge: three times the requests, every call slower, and the saturated path retransmitting
    # 0.7 segments/s while the service sends the provider 150 kB/s (about 104 segments/s: 0.7%).
    surge = trace_evidence(tr.window(1000, 600), tr.window(2000, 900, every_s=1 / 30, llm_ms=900, db_ms=40), SERVICE)
    surge.update(reachable=True)
    answers = _answers(INC_S, "10.0.0.9 api.provider.test")
    busy = capture([retrans(0.7, INC_S, top=[{"peer": provider, "count": 6}, {"peer": quiet, "count": 1}]),
                    _sent(INC_S, {provider: 150_000, quiet: 4_000}), answers],
                   [retrans(0.07, BASE_S, top=[{"peer": quiet, "count": 4}])])
    v = attribute(busy, traces=surge)
    assert v.domains == ["traffic"], v.to_dict()
    ev = next(e for e in hyp(v, "network").contradicting if e.signal == "tcp_retrans.retransmits_per_s")
    assert f"but under 3% of the segments sent to each peer ({provider} 0.6%" in ev.summary
    assert ev.summary.endswith("a busy path, not a lossy one")
    # A client's connection that retransmitted once over a trickle of data is at a high share,
    # but one retransmit in the window is not the rule's rate: still a busy path.
    client = "127.0.0.1:49246"
    once = capture([retrans(0.7, INC_S, top=[{"peer": provider, "count": 6}, {"peer": client, "count": 1}]),
                    _sent(INC_S, {provider: 150_000, client: 2_000}), answers], [retrans(0.07, BASE_S)])
    v = attribute(once, traces=surge)
    assert v.domains == ["traffic"], v.to_dict()
    ev = next(e for e in hyp(v, "network").contradicting if e.signal == "tcp_retrans.retransmits_per_s")
    assert "; the peers above it 0.00 → 0.10 /s: a busy path" in ev.summary
    # The same retransmits over a trickle of data (15 kB/s, about 10 segments/s: 6%) are loss, on
    # the provider's path only: the quiet peer's usual retransmit (as often as in the baseline)
    # is not part of it.
    lossy = capture([retrans(0.7, INC_S, top=[{"peer": provider, "count": 6}, {"peer": quiet, "count": 1}]),
                     _sent(INC_S, {provider: 15_000, quiet: 4_000}), answers],
                    [retrans(0.07, BASE_S, top=[{"peer": quiet, "count": 4}])])
    v = attribute(lossy, traces=evidence({"llm_ms": 1500}))
    assert v.domains == ["network"], v.to_dict()
    loss = hyp(v, "network").supporting[0]
    share = 0.6 / (15_000 / FULL_SEGMENT_BYTES)
    assert f"(top peer {provider} ×6, {share:.0%} of its segments); the path to llm openai" in loss.summary
    # Without tcp_flow the share is unknown: the rate alone decides, as before.
    v = attribute(capture([retrans(0.7, INC_S, top=[{"peer": provider, "count": 6}]), answers],
                          [retrans(0.07, BASE_S)]), traces=evidence({"llm_ms": 1500}))
    assert v.domains == ["network"], v.to_dict()


def test_a_slow_resolver_and_loss_on_a_dependencys_path_are_two_findings():
    from capture.schemas import Histogram, ProbeResult
    from tests.responder.test_attribution import BASE_S, INC_S, capture, hyp, retrans

    def lookups(slow_us: int, window: float, n: int) -> ProbeResult:
        return ProbeResult("dns", window, counters={"lookups": n, "failures": 0},
                           histograms={"latency": Histogram("us", {slow_us: n})},
                           top={"answers": [{"peer": "10.0.0.9 api.provider.test", "count": n}]})

    provider = "10.0.0.9:443"
    lossy = retrans(2.0, INC_S, top=[{"peer": provider, "count": 20}])
    v = attribute(capture([lossy, lookups(1_048_576, INC_S, 40)], [retrans(0.05, BASE_S), lookups(8192, BASE_S, 240)]),
                  traces=evidence({"llm_ms": 2000}))
    # The lookups go to the resolver, not over the provider's path: the loss does not explain them.
    assert sorted(v.domains) == ["dns", "network"], v.to_dict()
    assert "likely a symptom" not in hyp(v, "dns").supporting[0].summary
    # Weaker loss still makes two findings: a slow lookup nothing explains is a cause of its own.
    mild = retrans(0.8, INC_S, top=[{"peer": provider, "count": 8}])
    v = attribute(capture([mild, lookups(1_048_576, INC_S, 40)], [retrans(0.05, BASE_S), lookups(8192, BASE_S, 240)]),
                  traces=evidence({"llm_ms": 2000}))
    assert sorted(v.domains) == ["dns", "network"] and "each resting on a cause of its own" in v.decision, v.to_dict()
    # Loss with no peer named (the kernel could not tell where) may be on the resolver's path too.
    v = attribute(capture([retrans(2.0, INC_S), lookups(1_048_576, INC_S, 40)],
                          [retrans(0.05, BASE_S), lookups(8192, BASE_S, 240)]), traces=evidence({"llm_ms": 2000}))
    assert "likely a symptom of network" in hyp(v, "dns").supporting[0].summary


def test_a_guardrail_rejecting_requests_slows_no_other_dependency():
    from tests.responder.test_attribution import hyp

    tr = Traffic()

    def mixed(start: float, n: int, blocked_every: int, **kw) -> list:
        return [s for i in range(n) for s in tr.request(int((start + i * 0.1) * 1e9), blocked=i % blocked_every == 0,
                                                         **kw)]

    # One request in twelve rejected by the guardrail (8%: above a twentieth, as an error page
    # at 7.2% of requests failing needs) and, at the same time, a database 15 times slower.
    both = trace_evidence(mixed(1000, 300, 10_000), mixed(2000, 300, 12, db_ms=75), SERVICE)
    v = attribute(None, traces=dict(both, reachable=True))
    assert sorted(v.domains) == ["policy_layer", "retrieval_backend"], v.to_dict()
    db = hyp(v, "retrieval_backend").supporting[0]
    assert db.signal == "trace.retrieval.p90" and "likely a symptom" not in db.summary
    blocked = hyp(v, "policy_layer").supporting[0]
    assert blocked.signal == "trace.policy.error_share" and "0% → 8%" in blocked.summary
    # The rejections alone: the guardrail, and nothing else.
    alone = trace_evidence(mixed(1000, 300, 10_000), mixed(2000, 300, 12), SERVICE)
    assert attribute(None, traces=dict(alone, reachable=True)).domains == ["policy_layer"]
