"""Attribution: from a capture's kernel evidence and the service's traces to a ranked verdict.

The model (``capture.attribution.engine``: the kernel signals, how symptoms are explained away,
the decision rules) is shared with the agent's early warning; this module adds what only the
responder has, the trace evidence (per dependency, see ``responder.evidence.traces.evidence``):
``provider_throttling`` from GenAI calls failing with 429/529/503, ``provider_latency`` from GenAI
time to first token (or duration) when the other outbound dependencies stayed as they were,
``network`` when every outbound dependency slowed at once, ``retrieval_backend`` from slower or
failing retrieval calls, ``policy_layer`` (which the kernel cannot see) from slower or rejecting
guardrail spans, and ``traffic`` from the requests served per second. Each signal's threshold and
the reason for it is a row of ``capture.attribution.rules``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capture.attribution import peers
from capture.attribution.engine import Signal, decide, demand_strength, explain_away, ratio_strength, signals
from capture.attribution.rules import MIN_TRACE_CALLS, TRACE_MIN_RATIO, TRACE_RULE
from capture.attribution.verdict import Evidence, Verdict
from capture.schemas import CaptureResult
from responder.evidence.traces.evidence import DependencySignals, trace_signals
from responder.model.evidence import TraceEvidence


def _trace_latency_moved(d: DependencySignals) -> tuple[bool, float, float, str] | None:
    """Whether a dependency's p90 (TTFT p90 for GenAI calls that stream) rose; None without data."""
    if min(d.count_baseline, d.count_incident) < MIN_TRACE_CALLS:
        return None
    rule = TRACE_RULE.get(("trace_p90", d.kind))
    ttft = d.ttft_p90_ms_incident is not None and bool(d.ttft_p90_ms_baseline)
    b, i = (d.ttft_p90_ms_baseline, d.ttft_p90_ms_incident) if ttft else (d.p90_ms_baseline, d.p90_ms_incident)
    if b is None or i is None:
        return None
    moved = i >= TRACE_MIN_RATIO * b and i - b >= (rule.threshold if rule else 20.0)
    return moved, b, i, ("time to first token p90" if ttft else "p90")


def _where(d: DependencySignals) -> dict[str, Any]:
    """A trace signal's dependency and the peers its calls went to (Signal's keyword arguments)."""
    return {"peers": d.peers or None, "dependency": f"{d.kind} {d.name}"}


def _demand_signal(d: DependencySignals, ev: Callable[..., Evidence]) -> Signal | None:
    """The service's requests served per second, incident vs baseline (its server spans); None
    without enough requests or a window's length."""
    rule = TRACE_RULE["trace_request_rate", "server"]
    b, i = d.rate_baseline, d.rate_incident
    if b is None or i is None or b <= 0 or min(d.count_baseline, d.count_incident) < MIN_TRACE_CALLS:
        return None
    strength = demand_strength(rule, b, i)
    return Signal("traffic", ev(d, "request_rate", f"requests served {'rose' if strength else 'unchanged'}: "
                                f"{b:.1f} → {i:.1f}/s (×{i / b:.1f})", b, i, "/s"), strength)


def trace_signals_for(traces: TraceEvidence | dict[str, Any] | None,
                      trace_link: Callable[[str], str | None],
                      lossy_paths: list[frozenset[str]] | None = None,
                      hosts: peers.Hosts | None = None) -> tuple[list[Signal], list[str]]:
    """Signals from trace evidence (per dependency, incident vs baseline), and why some are missing.

    ``lossy_paths``: the peers of kernel network causes (retransmits, resets, failed connects to
    known addresses). With them, a slower dependency is the network's only when it is on one of
    those paths; without them, every outbound dependency slower at once is."""
    evidence = traces if isinstance(traces, TraceEvidence) else TraceEvidence.read(traces) if traces else None
    if evidence is None:
        return [], []
    if not evidence.reachable:
        return [], [f"traces unavailable: {evidence.error}"]
    deps = {(d.kind, d.name): d for d in trace_signals(evidence)}
    throttle_rule = TRACE_RULE["trace_rate", "llm"]

    def ev(d: DependencySignals, name: str, summary: str, b: float | None, i: float | None, unit: str) -> Evidence:
        ids = d.exemplar_trace_ids
        return Evidence(signal=f"trace.{d.kind}.{name}", summary=f"{d.kind} {d.name}: {summary}",
                        baseline=None if b is None else round(b, 3), incident=None if i is None else round(i, 3),
                        unit=unit, source="trace", link=trace_link(ids[0]) if ids else None)

    out: list[Signal] = []
    latency: dict[tuple[str, str], tuple[bool, Signal]] = {}
    for key, d in deps.items():
        kind = d.kind
        if kind not in ("llm", "retrieval", "policy", "http"):
            continue
        if d.count_incident >= MIN_TRACE_CALLS:
            eb, ei = d.error_rate_baseline or 0.0, d.error_rate_incident or 0.0
            if kind == "llm":
                t = d.throttle_rate_incident or 0.0
                moved = t >= throttle_rule.threshold
                out.append(Signal("provider_throttling", ev(
                    d, "throttled_share", f"calls answered 429/529/503 {'rose to' if moved else 'stayed at'} {t:.0%}"
                    f" ({d.retries_incident} retries)", None, t, "share"),
                    ratio_strength(t, max(eb, 0.01)) if moved else 0.0, **_where(d)))
            elif kind in ("retrieval", "policy"):
                domain = "retrieval_backend" if kind == "retrieval" else "policy_layer"
                moved = ei - eb >= TRACE_RULE["trace_error_share", kind].threshold
                timeouts = d.timeout_share_of_errors or 0.0
                out.append(Signal(domain, ev(d, "error_share", f"failing calls {'rose' if moved else 'unchanged'}: "
                                             f"{eb:.0%} → {ei:.0%}" + (f" ({timeouts:.0%} timeouts)" if moved and timeouts
                                                                     else ""), eb, ei, "share"),
                                  ratio_strength(ei, max(eb, 0.01)) if moved else 0.0,
                                  # mostly timeouts: the calls were slow, for whatever reason
                                  symptom=timeouts >= 0.5, **_where(d)))
        lat = _trace_latency_moved(d)
        if lat is not None:
            moved, b, i, what = lat
            latency[key] = (moved, Signal("", ev(d, what.replace(" ", "_"), f"{what} {'rose' if moved else 'unchanged'}:"
                                                 f" {b:.0f} → {i:.0f} ms", b, i, "ms"),
                                          ratio_strength(i, b) if moved else 0.0, symptom=True,
                                          **_where(d)))
    # A provider that throttles is slow because the client waits out retry-after and retries:
    # that latency is the throttling's, not a second cause.
    throttled = {k for k, d in deps.items() if d.kind == "llm"
                 and (d.throttle_rate_incident or 0.0) >= throttle_rule.threshold}
    for key in throttled & set(latency):
        sig = latency[key][1]
        if sig.strength > 0:
            sig.discount("the provider throttled: retries and retry-after waits")
    # Latency: every outbound dependency slower at once is the path (network), not one of them.
    # The kernel's lossy paths say which ones are the network's.
    outbound = [k for k in latency if k[0] in ("llm", "retrieval", "http") and k not in throttled]
    all_slow = len(outbound) >= 2 and all(latency[k][0] for k in outbound)

    def on_lossy_path(sig: Signal) -> bool:
        return not lossy_paths or any(peers.on_path(p, sig.peers, hosts or {}) for p in lossy_paths)

    for key, (_moved, sig) in latency.items():
        kind = key[0]
        if all_slow and kind in ("llm", "retrieval", "http") and key not in throttled and on_lossy_path(sig):
            sig.domain = "network"
        else:
            sig.domain = {"llm": "provider_latency", "retrieval": "retrieval_backend", "policy": "policy_layer",
                          "http": "network"}[kind]
        out.append(sig)
    out += [demand for d in deps.values() if d.kind == "server" and (demand := _demand_signal(d, ev))]
    return out, []


def _name_paths(ksigs: list[Signal], tsigs: list[Signal], hosts: peers.Hosts) -> None:
    """Say which dependency a kernel signal's peers belong to: "(top peer 10.0.0.7:5432 ×23: the
    path to retrieval postgresql)", when the spans name their peers."""
    for k in ksigs:
        if k.strength <= 0 or not k.peers:
            continue
        deps = sorted({t.dependency for t in tsigs if t.dependency and t.peers
                       and peers.on_path(k.peers, t.peers, hosts)})
        if deps:
            k.evidence.summary += f"; the path to {', '.join(deps)}"


def attribute(capture: CaptureResult | None, traces: TraceEvidence | dict[str, Any] | None = None,
              trace_link: Callable[[str], str | None] = lambda _trace_id: None,
              gaps: list[str] | None = None) -> Verdict:
    """The verdict from the kernel capture and the trace evidence; either may be missing."""
    gaps = list(gaps or [])
    if capture is not None:
        ksigs, kgaps = signals(capture)
    else:
        ksigs, kgaps = [], []
    hosts = peers.hosts_from(capture)
    lossy = [s.peers for s in ksigs if s.domain == "network" and not s.symptom and s.strength > 0 and s.peers]
    tsigs, tgaps = trace_signals_for(traces, trace_link, lossy, hosts)
    gaps += tgaps
    if capture is None and not tsigs:
        return Verdict(domains=[], confidence=0.0,
                       abstain_reason="; ".join(gaps) or "no capture: the probes did not run")
    gaps += kgaps
    _name_paths(ksigs, tsigs, hosts)
    return decide(explain_away(ksigs + tsigs, hosts), gaps)
