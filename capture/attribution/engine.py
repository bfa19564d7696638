"""The attribution model: how measured signals combine into a ranked verdict. The responder runs
it on a capture and the service's traces; the agent runs it on its flight recorder alone, every
interval, for its early warning (``capture.early_warning``): one model, not a second heuristic.

Kernel signals come from here (``signals``: one per row of ``capture.attribution.rules`` whose
probe ran); trace signals from the responder (``responder.attribution.engine``). Each signal
compares the incident window with the baseline window; a domain's strength adds up its signals
that moved, and the score is ``strength / (strength + STRENGTH_HALF)``; slower and timed-out
calls are symptoms that a cause in another domain explains away (``explain_away``). The score
orders the domains and drives the decision rules below (``decide``); it is not a probability.
The lab's calibration turns it into one (``responder.attribution.calibration``), and that is the
confidence a report shows.

Kernel evidence: ``network`` from retransmits (at a share of what was sent), resets, connects
and the round trip per peer; ``dns`` from getaddrinfo failures and latency;
``provider_throttling`` from HTTP 429 and 5xx responses seen in the TLS plaintext;
``provider_latency`` from time to first response byte; ``traffic`` from the 2xx responses per
second; ``retrieval_backend`` from request/reply latency per peer on plain TCP; ``app_cpu`` from
run-queue wait and CFS throttling; ``app_memory`` from OOM kills and memory-limit hits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from capture.attribution import peers
from capture.attribution.rules import (
    FULL_SEGMENT_BYTES,
    KERNEL_RULES,
    MIN_RATIO,
    MIN_TRACE_CALLS,
    PATH_ROUND_TRIPS,
    RTT_MIN_RATIO,
    STRONG_RATIO,
    TRAFFIC_MIN_RISE,
    TRAFFIC_STRONG_RATIO,
    Rule,
)
from capture.attribution.verdict import Evidence, Hypothesis, Verdict
from capture.schemas import UNKNOWN_PEER, CaptureResult, ProbeResult

# The signals, their thresholds and the reasons for them are rows of capture.attribution.rules;
# what follows is how the rows combine into a verdict.
# The strength at which a domain's confidence is 50%: one full-strength signal (1.0) gives
# 67%, two give 80%.
STRENGTH_HALF = 0.5
# A domain is named when its confidence reaches this...
MIN_CONFIDENCE = 0.5
# ...and leads the next domain by this much; closer than that, the evidence points two ways.
MIN_MARGIN = 0.15
# Two domains that are both at least this strong are named together (overlapping faults), however
# far apart: the confidence of one full-strength signal (67%). Higher would be out of reach for a
# domain with a single signal (app_cpu has only the run-queue one), so overlapping faults could
# never be named together.
BOTH_CONFIDENCE = 1.0 / (1.0 + STRENGTH_HALF)
# Below that, two domains that both reach MIN_CONFIDENCE are named together when each rests on a
# cause of its own (a signal that is not a symptom): two causes are two faults, not one fault
# seen two ways. Closeness through symptoms alone still abstains.

# Causes that slow a call only through the client's retries and their waits: they do not explain
# a latency timed per attempt (the kernel's time to first byte of each response).
THROUGH_RETRIES = frozenset({"provider_throttling"})

# A symptom (a slower call, a timed-out call) explained by a cause in another domain keeps this
# much of its strength: still visible in the report, no longer enough to compete with the cause.
EXPLAINED_FACTOR = 0.25


@dataclass
class Signal:
    domain: str
    evidence: Evidence
    strength: float  # 0: did not move (contradicts), > 0: supports the domain
    # A slower or timed-out call, seen in a trace or in the kernel: a symptom that many causes
    # share (see explain_away), as opposed to a cause signal (a retransmit, a run-queue wait, a 429).
    symptom: bool = False
    # A symptom on the way to every outbound call (a slow DNS lookup): left unexplained, it in
    # turn explains the slower calls after it.
    upstream: bool = False
    explained: bool = False  # discounted: another cause accounts for it
    why_explained: str = ""
    # The peers ("addr:port") the signal is about: a kernel signal's top peers, a dependency's
    # call targets. None: the whole workload (a run-queue wait, a slow resolver).
    peers: frozenset[str] | None = None
    dependency: str = ""  # a trace signal's dependency ("retrieval postgresql")
    # A path's added delay (ms): the slowdown this cause can account for on its path, up to
    # PATH_ROUND_TRIPS times over. None: any (a lost packet can cost a whole retransmit timeout).
    explains_ms: float | None = None
    per_attempt: bool = False  # a latency timed per attempt (see THROUGH_RETRIES)
    # A symptom that the causes present could not account for (another dependency's, another
    # path's, too small a delay): a finding of its own beside them.
    stands: bool = False

    def rise_ms(self) -> float | None:
        """How much slower a latency symptom got, in ms; None when its evidence is not a latency."""
        b, i, unit = self.evidence.baseline, self.evidence.incident, self.evidence.unit
        if b is None or i is None or unit not in ("ms", "us"):
            return None
        return (i - b) / (1000.0 if unit == "us" else 1.0)

    def discount(self, why: str) -> None:
        """Keep EXPLAINED_FACTOR of the strength: the signal is explained by ``why``."""
        self.strength *= EXPLAINED_FACTOR
        self.why_explained = why
        self.explained = True
        self.evidence.summary += f" ({why})"


def ratio_strength(incident: float, baseline: float) -> float:
    ratio = (incident + 1e-9) / (baseline + 1e-9) if baseline > 0 else STRONG_RATIO
    return min(1.0, math.log(max(ratio, 1.0)) / math.log(STRONG_RATIO))


def _peer_rates(r: ProbeResult | None, top: str) -> dict[str, float]:
    """Per known peer, a top list's count per second of the window."""
    if r is None or not r.window_s:
        return {}
    return {str(e["peer"]): e.get("count", 0) / r.window_s for e in r.top.get(top, [])
            if e.get("peer") and e["peer"] != UNKNOWN_PEER}


@dataclass
class _Loss:
    """A retransmit count split by peers: those at ``min_share`` of their segments sent or more
    (or whose data tcp_flow did not see), with their rate and their baseline's, and the busy rest."""
    lossy: list[tuple[str, float | None]]  # (peer, share), the largest count first
    busy: list[tuple[str, float]]
    rate: float  # the lossy peers' count per second, incident
    baseline: float  # the same peers', baseline


def _lossy_peers(rule: Rule, inc: ProbeResult, base: ProbeResult, flow: ProbeResult | None) -> _Loss | None:
    """The peers whose retransmits rose (to MIN_RATIO times their baseline's rate), split by
    ``rule.min_share`` of the segments sent to them (``tcp_flow``'s acknowledged bytes in
    full-size segments). None when tcp_flow did not run, or the retransmits name no such peer."""
    if flow is None or flow.error or not rule.min_share:
        return None
    sent = {p: r / FULL_SEGMENT_BYTES for p, r in _peer_rates(flow, "tx_bytes_peers").items()}
    before = _peer_rates(base, "peers")
    rising = sorted(((p, r) for p, r in _peer_rates(inc, "peers").items() if r >= MIN_RATIO * before.get(p, 0.0)),
                    key=lambda pr: -pr[1])
    if not rising:
        return None
    loss = _Loss([], [], 0.0, 0.0)
    for p, r in rising:
        share = r / sent[p] if sent.get(p) else None
        if share is None or share >= rule.min_share:
            loss.lossy.append((p, share))
            loss.rate += r
            loss.baseline += before.get(p, 0.0)
        else:
            loss.busy.append((p, share))
    return loss


def _rate_signal(rule: Rule, inc: ProbeResult, base: ProbeResult, flow: ProbeResult | None = None) -> Signal:
    i, b = inc.rate(rule.field), base.rate(rule.field)
    moved = i - b >= rule.threshold and (b == 0 or i / b >= MIN_RATIO)
    loss = _lossy_peers(rule, inc, base, flow) if moved else None
    if loss is not None:
        # The rule applies to the lossy peers' retransmits: the busy ones are not loss.
        li, lb = loss.rate, loss.baseline
        if not (li - lb >= rule.threshold and (lb == 0 or li / lb >= MIN_RATIO)):
            shares = ", ".join(f"{p} {share:.1%}" for p, share in loss.busy[:3])
            rest = f"; the peers above it {lb:.2f} → {li:.2f} {rule.unit}" if loss.lossy else ""
            ev = Evidence(signal=rule.signal, summary=f"{rule.what} rose: {b:.2f} → {i:.2f} {rule.unit}, but under "
                          f"{rule.min_share:.0%} of the segments sent to each peer ({shares}){rest}: a busy path, "
                          f"not a lossy one", baseline=round(b, 3), incident=round(i, 3), unit=rule.unit)
            return Signal(rule.domain, ev, 0.0)
        counts = {str(t["peer"]): t["count"] for t in inc.top.get("peers", [])}
        ev = Evidence(signal=rule.signal, summary=f"{rule.what} rose: {b:.2f} → {i:.2f} {rule.unit} (top peer " + ", ".join(
            f"{p} ×{counts.get(p, 0)}" + (f", {share:.0%} of its segments" if share is not None else "")
            for p, share in loss.lossy[:3]) + ")", baseline=round(b, 3), incident=round(i, 3), unit=rule.unit)
        return Signal(rule.domain, ev, ratio_strength(li, lb), peers=frozenset(p for p, _ in loss.lossy))
    strength = ratio_strength(i, b) if moved else 0.0
    verb = "rose" if moved else "did not rise enough"
    ev = Evidence(signal=rule.signal, summary=f"{rule.what} {verb}: {b:.2f} → {i:.2f} {rule.unit}",
                  baseline=round(b, 3), incident=round(i, 3), unit=rule.unit)
    top = next((inc.top[k] for k in ("peers", "failed_peers", "received_from", "victims", "failed_hosts",
                                      "throttled_peers", "error_peers") if inc.top.get(k)), None)
    known = [t for t in top or [] if t.get("peer") and t["peer"] != UNKNOWN_PEER]
    if moved and known:
        ev.summary += " (top peer " + ", ".join(f"{t['peer']} ×{t['count']}" for t in known[:3]) + ")"
    return Signal(rule.domain, ev, strength, peers=peers.kernel_peers(inc) if moved else None)


def demand_strength(rule: Rule, baseline: float, incident: float) -> float:
    """The strength of a rise in demand (per second): 0 below ``rule.threshold`` times the
    baseline or TRAFFIC_MIN_RISE more, full at TRAFFIC_STRONG_RATIO times."""
    if baseline <= 0:
        return 0.0
    ratio = incident / baseline
    if ratio < rule.threshold or incident - baseline < TRAFFIC_MIN_RISE:
        return 0.0
    return min(1.0, math.log(ratio) / math.log(TRAFFIC_STRONG_RATIO))


def _demand_rate_signal(rule: Rule, inc: ProbeResult, base: ProbeResult) -> Signal | None:
    """A counter that grows with the requests served, incident vs baseline; None without
    MIN_TRACE_CALLS counted in each window."""
    if min(inc.counters.get(rule.field, 0.0), base.counters.get(rule.field, 0.0)) < MIN_TRACE_CALLS:
        return None
    b, i = base.rate(rule.field), inc.rate(rule.field)
    strength = demand_strength(rule, b, i)
    ev = Evidence(signal=rule.signal, summary=f"{rule.what} {'rose' if strength else 'unchanged'}: {b:.1f} → "
                  f"{i:.1f}/s (×{i / b:.1f})", baseline=round(b, 3), incident=round(i, 3), unit="/s")
    return Signal(rule.domain, ev, strength)


def _p90_signal(rule: Rule, inc: ProbeResult, base: ProbeResult) -> Signal | None:
    """The p90 of a latency histogram, incident vs baseline; None without enough samples."""
    hi, hb = inc.histograms.get(rule.field), base.histograms.get(rule.field)
    if not hi or not hb or hi.count < rule.min_samples or hb.count < rule.min_samples:
        return None
    pi, pb = hi.quantile(0.9), hb.quantile(0.9)
    if pi is None or pb is None:  # empty: only when min_samples is 0
        return None
    moved = pi >= MIN_RATIO * pb and pi >= rule.threshold
    strength = ratio_strength(pi, pb) if moved else 0.0
    ev = Evidence(signal=rule.signal, summary=f"{rule.what} p90 {'rose' if moved else 'unchanged'}: ≤{pb:.0f} → "
                  f"≤{pi:.0f} µs ({hi.count} samples)", baseline=pb, incident=pi, unit="us")
    return Signal(rule.domain, ev, strength, symptom=rule.symptom, upstream=rule.upstream, per_attempt=rule.per_attempt,
                  peers=peers.kernel_peers(inc, ("peers", "responses_by_peer")) if rule.domain != "dns" else peers.RESOLVER)


# A share of zero in the baseline is read as this much, so that a ratio means something.
_SHARE_FLOOR = 0.005


def _share_signal(rule: Rule, inc: ProbeResult, base: ProbeResult) -> Signal | None:
    """The share of a histogram's samples at or above ``rule.bound``; None without enough samples."""
    hi, hb = inc.histograms.get(rule.field), base.histograms.get(rule.field)
    if not hi or not hb or hi.count < rule.min_samples or hb.count < rule.min_samples:
        return None
    si, sb = hi.fraction_above(rule.bound), hb.fraction_above(rule.bound)
    moved = si >= rule.threshold and si >= MIN_RATIO * max(sb, _SHARE_FLOOR)
    strength = ratio_strength(si, max(sb, _SHARE_FLOOR)) if moved else 0.0
    p99i, p99b = hi.quantile(0.99), hb.quantile(0.99)
    ev = Evidence(signal=rule.signal,
                  summary=(f"{rule.what} {'rose' if moved else 'unchanged'}: {sb:.1%} → {si:.1%} "
                           f"of {hi.count} waits (p99 ≤{p99b:.0f} → ≤{p99i:.0f} µs)"),
                  baseline=round(sb, 4), incident=round(si, 4), unit="share")
    return Signal(rule.domain, ev, strength, symptom=rule.symptom, upstream=rule.upstream)


def _peer_mean_signal(rule: Rule, inc: ProbeResult, base: ProbeResult, sums: str, counts: str,
                      min_ratio: float, what: str, path_delay: bool = False) -> Signal | None:
    """Per peer, the mean of the ``sums`` top list over the ``counts`` one (µs, shown in ms), incident
    against baseline; the signal moves on the peers whose mean rose by ``rule.threshold`` ms and to
    ``min_ratio`` times the baseline's (``rules``' ``peer_mean`` and ``peer_rtt``). ``path_delay``:
    the rise is a path's added delay, which explains slower calls on it (``explains_ms``). None
    when no peer has ``rule.min_samples`` in both windows."""
    def means(r: ProbeResult) -> dict[str, float]:
        return {p: us / 1000.0 for p, us in r.peer_means(sums, counts, rule.min_samples).items() if p != UNKNOWN_PEER}
    mi, mb = means(inc), means(base)
    both = sorted(set(mi) & set(mb), key=lambda p: mb[p] - mi[p])  # the largest rise first
    if not both:
        return None
    moved = [p for p in both if mi[p] >= min_ratio * mb[p] and mi[p] - mb[p] >= rule.threshold]
    shown = moved[:3] or both[:1]
    listed = "; ".join(f"{p} {mb[p]:.1f} → {mi[p]:.1f} ms" for p in shown)
    top = shown[0]
    summary = (f"{what} rose on {len(moved)} of {len(both)} peers: {listed}" if moved
               else f"{what} flat on all {len(both)} peers (the most changed: {listed})")
    ev = Evidence(signal=rule.signal, summary=summary, baseline=round(mb[top], 3), incident=round(mi[top], 3), unit="ms")
    if not moved:
        return Signal(rule.domain, ev, 0.0, symptom=rule.symptom, upstream=rule.upstream)
    return Signal(rule.domain, ev, max(ratio_strength(mi[p], mb[p]) for p in moved), symptom=rule.symptom,
                  upstream=rule.upstream, peers=frozenset(moved),
                  explains_ms=max(mi[p] - mb[p] for p in moved) if path_delay else None)


def signals(capture: CaptureResult) -> tuple[list[Signal], list[str]]:
    """Every signal the capture supports (one per kernel rule whose probe ran), and the reasons
    some could not be computed."""
    out: list[Signal] = []
    gaps: list[str] = []
    inc, base = capture.incident, capture.baseline
    pairs: dict[str, tuple[ProbeResult, ProbeResult] | None] = {}

    def pair(name: str) -> tuple[ProbeResult, ProbeResult] | None:
        if name in pairs:
            return pairs[name]
        i, b = inc.get(name), base.get(name)
        found: tuple[ProbeResult, ProbeResult] | None = None
        if i is None:
            pass
        elif i.error:
            gaps.append(f"{name} failed: {i.error}")
        elif b is None:
            gaps.append(f"{name} has no baseline ({capture.baseline_note or 'none recorded'})")
        else:
            if i.truncated:
                gaps.append(f"{name} was cut short: {i.truncated}")
            found = (i, b)
        pairs[name] = found
        return found

    for rule in KERNEL_RULES:
        assert rule.probe is not None
        p = pair(rule.probe)
        if p is None:
            continue
        if rule.measure == "rate":
            flow = inc.get("tcp_flow") if rule.min_share else None
            out.append(_rate_signal(rule, *p, flow))
        elif rule.measure == "p90":
            if s := _p90_signal(rule, *p):
                out.append(s)
        elif rule.measure == "peer_mean":
            if s := _peer_mean_signal(rule, *p, rule.field, "peers", MIN_RATIO, f"{rule.what} (mean per peer)"):
                out.append(s)
        elif rule.measure == "demand":
            if s := _demand_rate_signal(rule, *p):
                out.append(s)
        elif rule.measure == "peer_rtt":
            if s := _peer_mean_signal(rule, *p, "rtt_sum_us", "rtt_samples", RTT_MIN_RATIO, rule.what, path_delay=True):
                out.append(s)
            else:
                gaps.append(f"{rule.probe} saw no peer with {rule.min_samples}+ RTT samples in both windows")
        elif s := _share_signal(rule, *p):
            out.append(s)
        else:
            gaps.append(f"{rule.probe} saw fewer than {rule.min_samples} waits in a window")
    return out, gaps


def explain_away(sigs: list[Signal], hosts: peers.Hosts | None = None) -> list[Signal]:
    """Discount symptoms when a cause in another domain explains them.

    A provider or database call gets slower (or times out) when the provider or database is
    slow, but just as much when packets are lost on the way (network), the lookup before it
    stalls (dns) or the caller itself waits for a CPU (app_cpu). Latency cannot tell these apart,
    in a trace or in the kernel's time to first byte; cause signals can: retransmits, resets,
    failed connects and lookups, run-queue waits, CFS throttling, memory-limit hits, 429/5xx
    answers, non-timeout errors, more requests served. When a cause supports some domain and none
    supports the symptom's own, the symptom keeps only EXPLAINED_FACTOR of its strength, and says
    why. A cause on one dependency's path (retransmits to its address, throttled answers from
    its peer) explains only the symptoms on that path (``capture.attribution.peers``); a longer
    round trip there explains its calls only up to PATH_ROUND_TRIPS times the added delay; a cause
    without peers (a CPU wait, memory, demand) explains every call. Demand is weighed first: with
    more requests to serve, the service's CPU waits are demand's, so they are discounted too. A slow
    DNS lookup is itself such a symptom (a starved process finishes lookups late), but one no
    cause explains is on the way to every call: it explains the slower calls in turn.
    """
    # Demand first: a service serving many more requests waits for CPUs because it has more to
    # do, so its CPU waits are demand's, not a CPU fault's.
    demand = next((s for s in sigs if s.domain == "traffic" and s.strength > 0), None)
    if demand is not None:
        for s in sigs:
            if s.domain == "app_cpu" and s.strength > 0:
                s.discount(f"likely demand: {demand.evidence.summary.split(': ', 1)[-1]}")
    causes = [s for s in sigs if s.strength > 0 and not s.symptom and not s.explained]
    cause_domains = {c.domain for c in causes}

    def accounts_for(cause: Signal, symptom: Signal) -> bool:
        if not peers.on_path(cause.peers, symptom.peers, hosts or {}):
            return False
        if symptom.per_attempt and cause.domain in THROUGH_RETRIES:
            return False
        # A cause one dependency's calls show (its errors, its throttled answers) reaches another
        # dependency's calls only over a path they share: a guardrail rejecting requests in-process
        # makes no database call slower.
        if cause.dependency and symptom.dependency != cause.dependency and (cause.peers is None or symptom.peers is None):
            return False
        rise = symptom.rise_ms()
        return cause.explains_ms is None or rise is None or rise <= PATH_ROUND_TRIPS * cause.explains_ms

    for s in sigs:
        if s.symptom and s.strength > 0 and s.domain not in cause_domains:
            explaining = sorted({c.domain for c in causes if accounts_for(c, s)})
            if explaining:
                s.discount(f"likely a symptom of {', '.join(explaining)}")
            elif causes:
                s.stands = True
    # Then an upstream symptom left standing (a slow lookup) explains the slower calls after it.
    upstream = {s.domain for s in sigs if s.upstream and s.strength > 0 and not s.explained}
    for s in sigs:
        if s.symptom and not s.upstream and not s.explained and s.strength > 0 and upstream \
                and s.domain not in upstream:
            s.discount(f"likely a symptom of {', '.join(sorted(upstream))}")
    return sigs


def decide(sigs: list[Signal], gaps: list[str]) -> Verdict:
    """The verdict from signals already explained (``explain_away``): a hypothesis per domain, and
    the decision rules (name one, name two, or abstain and say why). ``gaps``: what could not be
    measured, for an abstention's reason."""
    if not sigs:
        return Verdict(domains=[], confidence=0.0,
                       abstain_reason="no usable evidence: " + ("; ".join(gaps) or "the capture saw nothing"))
    hyps: list[Hypothesis] = []
    # A cause of its own: a cause signal, an upstream symptom nothing explained (a slow lookup
    # that in turn explains the calls after it), or a symptom that stands beside the causes present.
    caused = {s.domain for s in sigs if s.strength > 0 and (not s.symptom or s.upstream or s.stands)
              and not s.explained}
    for domain in dict.fromkeys(s.domain for s in sigs):
        mine = [s for s in sigs if s.domain == domain]
        # Explained symptoms corroborate but do not add up: one cause slows every call it touches,
        # so three slower dependencies are not three times the evidence for their own domain.
        strength = (sum(s.strength for s in mine if not s.explained)
                    + max((s.strength for s in mine if s.explained), default=0.0))
        others = [s for s in sigs if s.domain != domain and s.strength > 0]
        hyps.append(Hypothesis(
            domain=domain, confidence=strength / (strength + STRENGTH_HALF), arithmetic=_arithmetic(mine, strength),
            supporting=[s.evidence for s in sorted(mine, key=lambda s: -s.strength) if s.strength > 0],
            # what argues against it: its own signals that stayed flat, other domains' that moved
            contradicting=[s.evidence for s in mine if s.strength == 0] + [s.evidence for s in others]))
    hyps.sort(key=lambda h: -h.confidence)
    top = hyps[0]
    second = hyps[1] if len(hyps) > 1 else None
    if top.confidence < MIN_CONFIDENCE:
        reason = f"evidence too weak: the strongest domain, {top.domain}, scores only {top.confidence:.2f}"
        if gaps:
            reason += " (" + "; ".join(gaps) + ")"
        return Verdict(domains=[], confidence=top.confidence, hypotheses=hyps, abstain_reason=reason,
                       decision=f"abstained: {top.domain} score {_below(top.confidence, MIN_CONFIDENCE)}")
    runner = f"{second.domain} {second.confidence:.2f}" if second else "no other domain"
    if second and second.confidence >= BOTH_CONFIDENCE:
        return Verdict(domains=[top.domain, second.domain], confidence=second.confidence, hypotheses=hyps,
                       decision=f"both named: scores {top.domain} {top.confidence:.2f} and {runner} ≥ "
                                f"{BOTH_CONFIDENCE:.2f}; the verdict's score is the lower")
    if second and second.confidence >= MIN_CONFIDENCE and {top.domain, second.domain} <= caused:
        return Verdict(domains=[top.domain, second.domain], confidence=second.confidence, hypotheses=hyps,
                       decision=f"both named: scores {top.domain} {top.confidence:.2f} and {runner} ≥ "
                                f"{MIN_CONFIDENCE:.2f}, each resting on a cause of its own; the verdict's score is the lower")
    if second and top.confidence - second.confidence < MIN_MARGIN:
        return Verdict(domains=[], confidence=top.confidence, hypotheses=hyps,
                       abstain_reason=(f"evidence points two ways: {top.domain} scores {top.confidence:.2f}, "
                                       f"{second.domain} {second.confidence:.2f}"),
                       decision=f"abstained: {top.domain} score {top.confidence:.2f} leads {runner} by "
                                f"{_below(top.confidence - second.confidence, MIN_MARGIN)}")
    lead = (f"leads {runner} by {top.confidence - second.confidence:.2f} ≥ {MIN_MARGIN:.2f}"
            if second else "no other domain moved")
    return Verdict(domains=[top.domain], confidence=top.confidence, hypotheses=hyps,
                   decision=f"named: {top.domain} score {top.confidence:.2f} ≥ {MIN_CONFIDENCE:.2f} and {lead}")


def attribute_kernel(capture: CaptureResult) -> Verdict:
    """The verdict from a capture's kernel evidence alone (the agent's early warning, and the
    lab's kernel-only mode): the same rows, the same explaining away, the same decision."""
    ksigs, gaps = signals(capture)
    return decide(explain_away(ksigs, peers.hosts_from(capture)), gaps)

def _below(value: float, bound: float) -> str:
    """``0.499 < 0.50``: "value < bound" with as many decimals as it takes for the two to differ."""
    for digits in (2, 3, 4):
        if f"{value:.{digits}f}" != f"{bound:.{digits}f}":
            break
    return f"{value:.{digits}f} < {bound:.2f}"


def _arithmetic(mine: list[Signal], strength: float) -> str:
    """One hypothesis' confidence, worked out: "tcp_retrans.retransmits_per_s 0 → 4.3: 1.00;
    trace.llm.p90 420 → 3900: 0.80 × 0.25 (explained) = 0.20 (counts once) · strength 1.20 →
    score 1.20 / (1.20 + 0.5) = 0.71"."""
    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3g}"

    parts = []
    for s in sorted(mine, key=lambda s: -s.strength):
        move = f"{s.evidence.signal} {num(s.evidence.baseline)} → {num(s.evidence.incident)}"
        if s.explained:
            parts.append(f"{move}: {s.strength / EXPLAINED_FACTOR:.2f} × {EXPLAINED_FACTOR:g} (explained) = "
                         f"{s.strength:.2f}")
        else:
            parts.append(f"{move}: {s.strength:.2f}")
    explained = sum(1 for s in mine if s.explained)
    rule = "; explained symptoms count once, the largest" if explained > 1 else ""
    conf = strength / (strength + STRENGTH_HALF)
    return (f"{'; '.join(parts)}{rule} · strength {strength:.2f} → score {strength:.2f} / ({strength:.2f} + "
            f"{STRENGTH_HALF:g}) = {conf:.2f}")
