"""One view of an incident, built once from what the store holds, for every renderer.

The chat thread (:mod:`responder.render.thread`) and the incident page
(:mod:`responder.render.page`) both render an :class:`IncidentView`: its state, alert, service,
burn window, verdict with ranked hypotheses, links, Prometheus and trace evidence and kernel
capture, read leniently (a malformed stored value is absent, never an exception). The wording
of numbers, durations and clock times lives here too, so a number reads the same in chat and on
the page.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from capture.attribution.verdict import Evidence, Hypothesis, Verdict
from capture.schemas import CaptureCost, CaptureResult, CaptureTarget, ProbeResult
from common.timefmt import unix_seconds
from responder.model.evidence import PrometheusEvidence, TraceEvidence, as_dict, as_dicts, as_float

# Incident states, in the order an incident usually moves through them.
STATE_CAPTURING = "capturing"
STATE_ATTRIBUTED = "attributed"
STATE_ABSTAINED = "abstained"
STATE_FAILED = "failed"
STATE_RESOLVED = "resolved"

# Links are listed in this order; kinds the contract does not name come last.
LINK_KINDS = ("alert", "runbook", "incident", "prometheus", "grafana", "trace")


def root_state(incident: dict[str, Any]) -> str:
    """The state an incident is in: capturing, attributed, abstained, failed or resolved."""
    return _state(incident.get("status"), read_verdict(incident.get("verdict")), bool(incident.get("error")))


def _state(status: Any, verdict: Verdict | None, failed: bool) -> str:
    if status == "resolved":
        return STATE_RESOLVED
    if verdict is not None:
        return STATE_ATTRIBUTED if verdict.domains else STATE_ABSTAINED
    return STATE_FAILED if failed else STATE_CAPTURING


@dataclass(frozen=True)
class Link:
    kind: str
    title: str
    url: str


@dataclass(frozen=True)
class IncidentView:
    """What the renderers show of one incident; build it with :meth:`of`."""

    id: str  # "" when the stored incident has none
    status: str
    state: str
    alertname: str
    service: str
    labels: dict[str, str]
    alerts: list[dict[str, Any]]
    playbook: str | None = None
    error: str | None = None
    verdict: Verdict | None = None
    hypotheses: list[Hypothesis] = field(default_factory=list)  # most likely first
    burn_start: float | None = None
    burn_end: float | None = None  # when it resolved, else None
    updated_at: float | None = None
    prometheus: PrometheusEvidence | None = None
    traces: TraceEvidence | None = None
    capture: CaptureResult | None = None
    links: list[Link] = field(default_factory=list)
    acknowledged: dict[str, Any] | None = None
    truncated_alerts: int = 0
    preliminary: Verdict | None = None  # the verdict posted at the alert's receipt, if one was
    # When things happened, for a timeline: the incident's creation (the alert's receipt), the
    # preliminary verdict and the burn's onset it dated (None when unknown).
    created_at: float | None = None
    preliminary_at: float | None = None
    onset: float | None = None

    @property
    def domains(self) -> list[str]:
        return list(self.verdict.domains) if self.verdict else []

    @property
    def named(self) -> list[Hypothesis]:
        """The hypotheses the verdict names, most likely first."""
        return [h for h in self.hypotheses if h.domain in self.domains]

    @property
    def others(self) -> list[Hypothesis]:
        """The hypotheses the verdict does not name, most likely first."""
        return [h for h in self.hypotheses if h.domain not in self.domains]

    @classmethod
    def of(cls, incident: Any, *, verdict: Verdict | None = None,
           capture: CaptureResult | None = None) -> IncidentView:
        """The view of a stored incident (``to_dict`` form). ``verdict`` and ``capture``, when given,
        are the typed values the pipeline has in hand and win over the stored ones."""
        inc = dict(incident) if isinstance(incident, dict) else {}
        labels = {str(k): str(v) for k, v in (as_dict(inc.get("labels")) or {}).items()}
        alerts = as_dicts(inc.get("alerts"))
        inc.update(labels=labels, alerts=alerts)
        verdict = verdict if verdict is not None else read_verdict(inc.get("verdict"))
        evidence = as_dict(inc.get("evidence")) or {}
        traces = TraceEvidence.read(evidence.get("traces"))
        if capture is None:
            capture = read_capture(inc.get("capture"))
        hyps = sorted(verdict.hypotheses, key=lambda h: -h.confidence) if verdict else []
        status = str(inc.get("status") or "?")
        start = burn_start(inc)
        end = unix_seconds(inc.get("resolved_at")) if status == "resolved" else None
        if status == "resolved" and end is None:
            ends = [e for e in (unix_seconds(a.get("endsAt")) for a in alerts) if e is not None]
            end = max(ends) if ends else None
        ack = as_dict(inc.get("acknowledged"))
        truncated = as_float(inc.get("truncated_alerts"))
        prelim = as_dict(inc.get("preliminary")) or {}
        return cls(
            id=str(inc.get("id") or ""), status=status,
            state=_state(status, verdict, bool(inc.get("error"))),
            alertname=alertname(inc), service=_service(labels, alerts, traces), labels=labels, alerts=alerts,
            playbook=str(inc["playbook"]) if inc.get("playbook") else None,
            error=str(inc["error"]) if inc.get("error") else None,
            verdict=verdict, hypotheses=hyps, burn_start=start, burn_end=end,
            updated_at=as_float(inc.get("updated_at")),
            prometheus=PrometheusEvidence.read(evidence.get("prometheus")), traces=traces,
            capture=capture,
            links=_links(inc), acknowledged=ack, truncated_alerts=int(truncated or 0),
            preliminary=read_verdict(prelim.get("verdict")), created_at=unix_seconds(inc.get("created_at")),
            preliminary_at=as_float(prelim.get("at")), onset=_onset(prelim))


def _onset(prelim: dict[str, Any]) -> float | None:
    window = prelim.get("window")
    return as_float(window[0]) if isinstance(window, list) and window else None


def read_verdict(value: Any) -> Verdict | None:
    """A stored verdict, keeping what reads (an unreadable hypothesis or evidence item is left out,
    an unreadable confidence is NaN, which renders as "?")."""
    d = as_dict(value)
    if d is None:
        return None
    domains = d.get("domains")
    if isinstance(domains, str):
        domains = [domains] if domains else []
    hyps = []
    for h in as_dicts(d.get("hypotheses")):
        conf = as_float(h.get("confidence"))
        hyps.append(Hypothesis(str(h.get("domain") or "?"), conf if conf is not None else 0.0,
                               supporting=_evidence_list(h.get("supporting")),
                               contradicting=_evidence_list(h.get("contradicting")),
                               arithmetic=str(h.get("arithmetic") or ""), score=as_float(h.get("score"))))
    conf = as_float(d.get("confidence"))
    reason = d.get("abstain_reason")
    return Verdict(domains=[str(x) for x in domains] if isinstance(domains, list) else [],
                   confidence=conf if conf is not None else math.nan, hypotheses=hyps,
                   abstain_reason=str(reason) if reason else None,
                   calibration=str(d["calibration"]) if d.get("calibration") else None,
                   decision=str(d.get("decision") or ""), score=as_float(d.get("score")))


def _evidence_list(value: Any) -> list[Evidence]:
    out = []
    for e in as_dicts(value):
        link = e.get("link")
        out.append(Evidence(signal=str(e.get("signal") or "?"), summary=str(e.get("summary") or ""),
                            baseline=as_float(e.get("baseline")), incident=as_float(e.get("incident")),
                            unit=str(e.get("unit") or ""), source=str(e.get("source") or "?"),
                            link=str(link) if link else None))
    return out


def read_capture(value: Any) -> CaptureResult | None:
    """A stored capture; one stored in part (an older version, a value shaped oddly) keeps what
    reads, with defaults for the rest, so the page still shows what it has."""
    d = as_dict(value)
    if d is None:
        return None
    try:
        return CaptureResult.from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    target = as_dict(d.get("target")) or {}
    cost = as_dict(d.get("cost")) or {}
    windows: dict[str, dict[str, ProbeResult]] = {"incident": {}, "baseline": {}}
    for window, results in windows.items():
        for name, pr in (as_dict(d.get(window)) or {}).items():
            try:
                results[str(name)] = ProbeResult.from_dict(pr)
            except (KeyError, TypeError, ValueError, AttributeError):
                raw = as_dict(pr) or {}
                results[str(name)] = ProbeResult(str(name), 0.0, lost=int(as_float(raw.get("lost")) or 0),
                                                 error=str(raw["error"]) if raw.get("error") else None,
                                                 truncated=str(raw["truncated"]) if raw.get("truncated") else None)
    errors = d.get("errors")
    costs: dict[str, Any] = {f.name: (int if f.type == "int" else float)(as_float(cost.get(f.name)) or 0)
                             for f in fields(CaptureCost)}
    return CaptureResult(
        id=str(d.get("id") or "?"), node=str(d.get("node") or "?"),
        target=CaptureTarget(**{f.name: list(target[f.name]) for f in fields(CaptureTarget)
                                if isinstance(target.get(f.name), list)}),
        started_at=as_float(d.get("started_at")) or 0.0, ended_at=as_float(d.get("ended_at")) or 0.0,
        incident=windows["incident"], baseline=windows["baseline"], baseline_note=str(d.get("baseline_note") or ""),
        workloads=as_dicts(d.get("workloads")), processes=as_dicts(d.get("processes")),
        cost=CaptureCost(**costs),
        errors=[str(e) for e in errors] if isinstance(errors, list) else [],
        nodes=as_dicts(d.get("nodes")), pods=as_dicts(d.get("pods")))


def capture_problems(capture: CaptureResult) -> list[str]:
    """What went wrong capturing: the capture's own errors, then each probe's error, truncation
    and lost events, in the incident window and then the baseline."""
    problems = list(capture.errors)
    for label, results in (("", capture.incident), (" (baseline)", capture.baseline)):
        for name, pr in results.items():
            problems += [f"{name}{label}: {what}" for what in (
                f"error: {pr.error}" if pr.error else None,
                f"truncated: {pr.truncated}" if pr.truncated else None,
                f"{pr.lost:,} events lost" if pr.lost else None) if what]
    return problems


def alertname(incident: dict[str, Any]) -> str:
    name = (as_dict(incident.get("labels")) or {}).get("alertname")
    if not name:
        for alert in as_dicts(incident.get("alerts")):
            name = (as_dict(alert.get("labels")) or {}).get("alertname")
            if name:
                break
    return str(name or "(unnamed alert)")


def burn_start(incident: dict[str, Any]) -> float | None:
    """The earliest of the incident's creation and its alerts' ``startsAt``."""
    times = [unix_seconds(incident.get("created_at"))]
    times += [unix_seconds(a.get("startsAt")) for a in as_dicts(incident.get("alerts"))]
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _service(labels: dict[str, str], alerts: list[dict[str, Any]], traces: TraceEvidence | None) -> str:
    service = labels.get("service")
    for alert in alerts:
        service = service or (as_dict(alert.get("labels")) or {}).get("service")
    return str(service or (traces.service if traces else "") or "")


def _links(inc: dict[str, Any]) -> list[Link]:
    """The incident's links, then alert sources and runbook annotations not already there, by kind."""
    out: list[Link] = []
    seen: set[str] = set()

    def add(kind: str, title: str, url: Any) -> None:
        url = str(url or "").strip()
        if url and url not in seen:
            seen.add(url)
            out.append(Link(kind, title or url, url))

    for link in as_dicts(inc.get("links")):
        add(str(link.get("kind") or "other"), str(link.get("title") or ""), link.get("url"))
    for alert in as_dicts(inc.get("alerts")):
        name = str((as_dict(alert.get("labels")) or {}).get("alertname") or "alert")
        add("alert", f"{name}: alert rule in Prometheus", alert.get("generatorURL"))
        add("runbook", f"{name}: runbook", (as_dict(alert.get("annotations")) or {}).get("runbook_url"))
    order = {k: i for i, k in enumerate(LINK_KINDS)}
    return sorted(out, key=lambda link: order.get(link.kind, len(order)))  # stable: keeps each kind's order


# -- wording shared by every renderer --------------------------------------------------------------

def pct(confidence: float | None) -> str:
    if confidence is None or math.isnan(confidence):
        return "?"
    return f"{round(max(0.0, min(1.0, confidence)) * 100)}%"


def likelihood(item: Verdict | Hypothesis) -> str:
    """A verdict's or hypothesis' number as what it is: a calibrated probability ("82%"), or the
    engine's score when no lab calibration was applied ("score 0.71")."""
    if item.score is not None:
        return pct(item.confidence)
    c = item.confidence
    return "score ?" if c is None or math.isnan(c) else f"score {c:.2f}"


def verdict_phrase(verdict: Verdict) -> str:
    """A verdict in a few words: "network 82%", or "abstained"."""
    return f"{' + '.join(verdict.domains)} {likelihood(verdict)}" if verdict.domains else "abstained"


def confirms(preliminary: Verdict, verdict: Verdict) -> bool:
    """Whether the capture's verdict names the same domains as the preliminary one."""
    return sorted(preliminary.domains) == sorted(verdict.domains)


def confidence_phrase(verdict: Verdict) -> str:
    """"82% confidence" (calibrated), or "score 0.71, not calibrated"."""
    if verdict.score is not None:
        return f"{pct(verdict.confidence)} confidence"
    return f"{likelihood(verdict)}, not calibrated"


def unit(u: str) -> str:
    """A unit as it follows a number: "/s" and "%" attach, others after a space."""
    if not u:
        return ""
    return u if u.startswith(("%", "/")) else f" {u}"


def num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100 or value == int(value):
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def change(baseline: float | None, incident: float | None, u: str = "") -> str:
    """``0.05 → 3.8/s``: a signal's move from the baseline to the incident, with its unit once."""
    return f"{num(baseline)} → {num(incident)}{unit(u)}"


def duration(seconds: float) -> str:
    """``4m 12s``, ``1h 3m``, ``2d 4h``, ``45s``, ``0.4s``: the two largest units."""
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    parts: list[str] = []
    for name, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (name == "s" and not parts):
            parts.append(f"{s // size}{name}")
            s %= size
    return " ".join(parts[:2])


def clock(ts: float) -> str:
    """A Unix time as ``2024-11-27 10:42:01`` (UTC), or "?" for one no calendar can show."""
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return "?"


def rose(baseline: float | None, incident: float | None) -> bool:
    """A change worth drawing the eye to: at least 1.5x the baseline, or from zero to something."""
    if baseline is None or incident is None:
        return False
    return incident > baseline * 1.5 if baseline > 0 else incident > 0 and baseline == 0
