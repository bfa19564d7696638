"""The responder's path for one job, as explicit stages with typed inputs and outputs:

    investigate: playbook -> scope -> gather (kernel capture, traces and Prometheus, concurrently)
                 -> attribute -> report (outbox)
    resolve:     mark resolved -> report (outbox)

Intake and dedup happened before (``responder.app`` and ``responder.store``); delivery of what
the report stage enqueues happens after (``responder.delivery.outbox``). Every stage's output is
persisted on the incident, so a crash re-runs at most the stage that was in flight.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from capture.client import AgentError
from capture.schemas import CaptureRequest, CaptureResult, CaptureTarget, RequestError
from common.timefmt import parse_timestamp
from responder.attribution import calibration
from responder.attribution.engine import attribute
from responder.config import Settings
from responder.evidence.prometheus import burn_onset, prometheus_evidence
from responder.evidence.traces.backends import TraceBackend
from responder.evidence.traces.gather import gather_trace_evidence
from responder.kube.cluster import KubeCluster, KubeUnavailable, Scope, ScopeError, named_workloads, workload_label_names
from responder.model import adhoc
from responder.model.verdict import Verdict
from responder.playbooks import Playbook, ScopeSpec, select_playbook
from responder.render import links, page
from responder.render import thread as report
from responder.store.base import Incident, Job, StoreBase, StoreUnavailable

log = logging.getLogger(__name__)


class AgentClient(Protocol):
    async def capture(self, req: CaptureRequest) -> CaptureResult: ...


def alert_labels(incident: Incident) -> dict[str, str]:
    """The labels a playbook matches on: the group's common labels, then the first firing alert's."""
    labels = dict(incident.labels or {})
    firing = [a for a in incident.alerts if a.get("status") == "firing"] or incident.alerts
    if firing:
        labels.update(firing[0].get("labels", {}))
    return labels


def scope_from_labels(spec: ScopeSpec, labels: dict[str, str], kube: KubeCluster | None = None) -> Scope:
    """Stage *scope*. On Kubernetes, the pods the alert's workload labels name (their UIDs and,
    when a container is named, its ids); on a plain host, the pid / cgroup / port labels the
    playbook names."""
    if kube is not None:
        if not named_workloads(spec, labels):
            raise ScopeError("no workload label on the alert: expected a namespace and one of "
                             + (", ".join(workload_label_names(spec)) or "(the playbook names no Kubernetes labels)"))
        return kube.resolve(spec, labels)
    target = CaptureTarget()
    pid = spec.first_present(spec.pid_labels, labels)
    if pid is not None:
        if not pid.isdigit():
            raise ScopeError(f"label pid={pid!r} is not a process id")
        target.pids.append(int(pid))
    cgroup = spec.first_present(spec.cgroup_labels, labels)
    if cgroup is not None:
        target.cgroups.append(cgroup)
    port = spec.first_present(spec.port_labels, labels)
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ScopeError(f"label port={port!r} is not a TCP port")
        target.ports.append(int(port))
    if target.is_empty():
        if workloads := named_workloads(spec, labels):
            named = ", ".join(f"{label}={value}" for _, label, value in workloads)
            host = ", ".join([*spec.pid_labels, *spec.cgroup_labels, *spec.port_labels])
            raise ScopeError(f"the alert names {named}, which only Kubernetes resolves to pods, but this responder "
                             "does not use Kubernetes (LLMSLO_AGENT_DISCOVERY=kubernetes); on a plain host add a "
                             f"pid, cgroup or port label ({host})")
        wanted = [*spec.pid_labels, *spec.cgroup_labels, *spec.port_labels]
        raise ScopeError(f"no scope label on the alert: expected one of {', '.join(wanted)}")
    return Scope(target=target, pods=[], description=target.describe())


def baseline_end(incident: Incident) -> float | None:
    """The baseline ends where the burn under investigation began: the earliest firing alert's
    startsAt. An incident investigated before (alerts joined its group later) looks only at
    alerts that started after that verdict, so a long-window alert still firing from an earlier
    burn does not pull the baseline back into it."""
    starts = []
    for a in incident.alerts:
        if a.get("status", "firing") != "firing":
            continue
        try:
            starts.append(parse_timestamp(a["startsAt"]).timestamp())
        except (KeyError, ValueError, TypeError):
            continue
    if incident.attributed_at is not None:
        starts = [s for s in starts if s > incident.attributed_at] or starts
    return min(starts) if starts else None


# The application evidence's incident window reaches back to the burn's start, but no further
# than this: a long-running incident's re-investigation compares its last minutes, not hours of
# spans.
MAX_INCIDENT_WINDOW_S = 600.0
# Metrics get a longer baseline than the capture: SLO series are smooth and cheap to read, and
# the chart shows where the burn rate sat before the alert.
METRICS_BASELINE_S = 900.0
# How long finding the burn's onset in Prometheus may delay the capture.
ONSET_TIMEOUT_S = 3.0


def evidence_windows(burn_start: float | None, end: float, duration_s: float,
                     baseline_s: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(baseline, incident) windows for traces and metrics, ending at ``end``.

    The incident window starts where the burn began (at least one capture long, at most
    MAX_INCIDENT_WINDOW_S); the baseline is the ``baseline_s`` just before it, the same place
    the kernel capture's baseline comes from.
    """
    start = end - duration_s if burn_start is None else burn_start
    start = min(max(start, end - MAX_INCIDENT_WINDOW_S), end - duration_s)
    return (start - baseline_s, start), (start, end)


@dataclass
class Outcome:
    playbook: Playbook | None
    target: CaptureTarget | None
    capture: CaptureResult | None
    verdict: Verdict


class Pipeline:
    def __init__(self, store: StoreBase, playbooks: list[Playbook], agent: AgentClient,
                 sinks: list[str], settings: Settings, traces: TraceBackend | None = None,
                 on_enqueued: Callable[[], None] = lambda: None, kube: KubeCluster | None = None):
        self.store = store
        self.kube = kube
        self.playbooks = playbooks
        self.agent = agent
        self.sinks = sinks
        self.settings = settings
        self.default_channel = settings.slack_channel
        self.base_url = settings.base_url
        self.traces = traces
        self.on_enqueued = on_enqueued
        self.calibration = calibration.load(settings.calibration_file)

    def incident_url(self, incident_id: str) -> str:
        return f"{self.base_url}/incidents/{incident_id}"

    async def run(self, job: Job) -> None:
        if job.kind == "investigate":
            await self.investigate(job)
        elif job.kind == "resolve":
            await self.resolve(job)
        else:
            raise ValueError(f"unknown job kind {job.kind!r}")

    async def _incident(self, incident_id: str) -> Incident:
        inc = await asyncio.to_thread(self.store.get_incident, incident_id)
        if inc is None:
            raise LookupError(f"incident {incident_id} vanished from the store")
        return inc

    async def _enqueue(self, incident_id: str, step: str, op: str, message: report.Message,
                       channel: str | None = None, borrowed: frozenset[str] = frozenset(),
                       file: dict[str, str] | None = None) -> None:
        """Persist one message per sink. A sink in ``borrowed`` answers in someone else's thread
        (an ad hoc capture asked for from an incident's thread): it gets replies only, and never
        touches that thread's root."""
        body: dict[str, Any] = {"op": op, "message": message.to_dict(), "channel": channel}
        if file is not None:
            body["file"] = file
        for sink in self.sinks:
            if sink in borrowed and op != "reply":
                continue
            await asyncio.to_thread(self.store.enqueue_message, incident_id, sink, step, body)
        self.on_enqueued()

    async def _borrow_thread(self, inc: Incident) -> frozenset[str]:
        """For a capture asked for inside a thread: record that thread as the incident's own for
        its sink, so the replies land there; the sinks whose thread is borrowed."""
        borrowed = self.borrowed(inc)
        r = adhoc.options(inc.alerts).reply_to
        if borrowed and r is not None and (inc.thread or {}).get(r["sink"]) is None:
            await asyncio.to_thread(self.store.update_incident, inc.id, thread={
                r["sink"]: {"channel": r["channel"], "ts": r["ts"], "borrowed_from": r.get("incident_id") or "?"}})
        return borrowed

    def render_root(self, inc: Incident) -> report.Message:
        return report.render_root(inc.to_dict(), self.incident_url(inc.id), self.settings.slack_mention_label)

    def borrowed(self, inc: Incident) -> frozenset[str]:
        """The sinks in which this incident answers inside another incident's thread."""
        r = adhoc.options(inc.alerts).reply_to
        return frozenset({r["sink"]}) if r and r["sink"] in self.sinks else frozenset()

    async def acknowledge(self, incident_id: str, by: str) -> bool:
        """Record who acknowledged the incident and show it on the root; False when it already was."""
        inc = await self._incident(incident_id)
        if inc.acknowledged:
            return False
        inc = await asyncio.to_thread(self.store.update_incident, inc.id, acknowledged={"by": by, "at": time.time()})
        await self._enqueue(inc.id, "root:acknowledged", "update", self.render_root(inc), None, self.borrowed(inc))
        return True

    def route(self, labels: dict[str, str], playbook: Playbook | None) -> str | None:
        """The channel for a new thread: the alert's channel label, else the playbook's, else the default."""
        return (labels.get(self.settings.slack_channel_label) or (playbook.channel if playbook else None)
                or self.default_channel)

    async def investigate(self, job: Job) -> Outcome:
        inc = await self._incident(job.incident_id)
        labels = alert_labels(inc)
        # Stage: playbook.
        playbook = select_playbook(self.playbooks, labels)
        opts = adhoc.options(inc.alerts)
        borrowed = await self._borrow_thread(inc)
        inc = await asyncio.to_thread(self.store.update_incident, inc.id,
                                      playbook=playbook.name if playbook else None)
        await self._enqueue(inc.id, "root", "root", self.render_root(inc),
                            self.route(labels, playbook), borrowed)
        if borrowed:
            await self._enqueue(inc.id, "requested", "reply",
                                report.render_requested(inc.to_dict(), self.incident_url(inc.id)), None, borrowed)
        log.info("incident=%s event=investigate job=%s playbook=%s", inc.id, job.id,
                 playbook.name if playbook else None)
        target = capture = None
        evidence: dict[str, Any] = {"prometheus": None, "traces": None}
        runbooks = [{"title": r.title, "url": r.url} for r in playbook.runbooks] if playbook else []
        if playbook is None:
            verdict = Verdict(domains=[], confidence=0.0, abstain_reason="no playbook matches the alert's labels")
        else:
            # Stage: gather. The kernel capture, traces and metrics run concurrently; the latter
            # two read their incident window up to the capture's end.
            onset = await self.burn_began(inc, playbook, labels)
            duration = opts.duration_s or playbook.capture.duration_s
            (capture, capture_gap), evidence = await asyncio.gather(
                self.capture_stage(inc, playbook, labels, onset, duration, opts.probes),
                self.application_evidence(inc, playbook, labels, time.time() + duration, onset, duration))
            target = capture.target if capture else None
            # Stage: attribute.
            verdict = attribute(capture, traces=evidence["traces"],
                                trace_link=lambda tid: links.trace_url(self.settings, tid),
                                gaps=[capture_gap] if capture_gap else [])
            if self.calibration and verdict.domains:
                verdict.calibration = self.calibration.describe(verdict.confidence)
        incident_links = links.incident_links(self.settings, inc.to_dict(), evidence["prometheus"],
                                              evidence["traces"], runbooks)
        inc = await asyncio.to_thread(self.store.update_incident, inc.id, verdict=verdict.to_dict(),
                                      capture=capture.to_dict() if capture else None, evidence=evidence,
                                      links=incident_links, attributed_at=time.time())
        log.info("incident=%s event=attributed domains=%s confidence=%.2f abstain=%r", inc.id,
                 ",".join(verdict.domains), verdict.confidence, verdict.abstain_reason)
        # Stage: report.
        await self._enqueue(inc.id, f"root:attributed:{job.id}", "update",
                            self.render_root(inc), None, borrowed)
        await self._enqueue(inc.id, f"attribution:{job.id}", "reply",
                            report.render_attribution(inc.to_dict(), verdict, capture, runbooks,
                                                      self.incident_url(inc.id)), None, borrowed)
        await self._enqueue_chart(inc, f"chart:{job.id}", borrowed)
        return Outcome(playbook, target, capture, verdict)

    async def _enqueue_chart(self, inc: Incident, step: str, borrowed: frozenset[str]) -> None:
        """The incident page's chart as a PNG reply; nothing when there is no evidence to draw."""
        try:
            png = await asyncio.to_thread(page.chart_png, inc.to_dict())
        except Exception:  # a chart bug must not hold back the rest of the thread
            log.exception("incident=%s event=chart_failed", inc.id)
            return
        if png is None:
            return
        comment = f"Burn rate and key signals, baseline vs incident ({self.incident_url(inc.id)})"
        await self._enqueue(inc.id, step, "file", report.Message(text=comment), None, borrowed,
                            file={"filename": f"{inc.id}-chart.png", "title": f"{inc.id} chart",
                                  "content_b64": base64.b64encode(png).decode()})

    async def burn_began(self, inc: Incident, playbook: Playbook, labels: dict[str, str]) -> float | None:
        """Where the baselines end: the burn's onset from Prometheus when it can tell, else the
        alert's startsAt."""
        alert_start = baseline_end(inc)
        if alert_start is None:
            return None
        try:
            # Bounded: a Prometheus that is down must not hold the kernel capture back.
            onset = await asyncio.wait_for(
                burn_onset(self.settings, list(playbook.prometheus.queries), labels, alert_start), ONSET_TIMEOUT_S)
        except TimeoutError:
            log.warning("incident=%s event=burn_onset_timeout after_s=%s", inc.id, ONSET_TIMEOUT_S)
            onset = None
        if onset is not None and onset < alert_start:
            log.info("incident=%s event=burn_onset onset=%.1f alert_start=%.1f lead_s=%.1f", inc.id, onset,
                     alert_start, alert_start - onset)
            return onset
        return alert_start

    async def capture_stage(self, inc: Incident, playbook: Playbook, labels: dict[str, str],
                            onset: float | None, duration_s: float,
                            probes: tuple[str, ...] | None = None) -> tuple[CaptureResult | None, str | None]:
        """Stages scope and kernel capture (the playbook's probes unless ``probes``); (result,
        None) or (None, why there is none)."""
        try:
            scope = await asyncio.to_thread(scope_from_labels, playbook.scope, labels, self.kube)
            req = CaptureRequest(target=scope.target, probes=list(probes or playbook.capture.probes),
                                 duration_s=duration_s, baseline_s=playbook.capture.baseline_s,
                                 baseline_end=onset, incident_id=inc.id)
            log.info("incident=%s event=scope %s", inc.id, "; ".join([scope.description, *scope.notes]))
            result = await self.agent.capture(req)
            result.errors += scope.notes  # pods left out, and why
            return result, None
        except (ScopeError, RequestError, KubeUnavailable) as e:
            return None, f"could not scope the capture: {e}"
        except AgentError as e:  # the thread gets the sentence, the log the address and the cause
            log.warning("incident=%s event=capture_failed error=%s", inc.id, e.detail)
            return None, f"the capture failed: {e}"
        except StoreUnavailable:
            raise
        except Exception as e:  # a bug: the log has the traceback, the thread a sentence
            log.exception("incident=%s event=capture_failed", inc.id)
            return None, f"the capture failed ({type(e).__name__}; the responder's log has the details)"

    async def application_evidence(self, inc: Incident, playbook: Playbook, labels: dict[str, str],
                                   end: float, onset: float | None, duration_s: float) -> dict[str, Any]:
        """Traces and Prometheus over the baseline and incident windows, read once ``end`` has passed."""
        baseline, incident = evidence_windows(onset, end, duration_s,
                                              playbook.capture.baseline_s)
        await asyncio.sleep(max(0.0, end - time.time()))
        service = playbook.traces.service(labels)

        async def traces() -> dict[str, Any] | None:
            if self.traces is None or service is None:
                return None
            return await gather_trace_evidence(self.traces, self.settings, service, baseline, incident)

        async def metrics() -> dict[str, Any] | None:
            if not playbook.prometheus.queries:
                return None
            longer = (incident[0] - max(METRICS_BASELINE_S, baseline[1] - baseline[0]), incident[0])
            return await prometheus_evidence(self.settings, list(playbook.prometheus.queries), labels, longer,
                                             incident, step=playbook.prometheus.step_s)

        t: dict[str, Any] | BaseException | None
        p: dict[str, Any] | BaseException | None
        t, p = await asyncio.gather(traces(), metrics(), return_exceptions=True)
        out: dict[str, Any] = {}
        for key, value in (("traces", t), ("prometheus", p)):
            if isinstance(value, BaseException):  # a bug, not an outage (those are reported inside)
                log.error("incident=%s event=%s_evidence_failed error=%r", inc.id, key, value)
                value = {"reachable": False, "error": f"reading it failed ({type(value).__name__}; the responder's "
                                                      "log has the details)"}
            out[key] = value
        log.info("incident=%s event=application_evidence traces=%s prometheus=%s", inc.id,
                 None if t is None else (t.get("reachable") if isinstance(t, dict) else "error"),
                 None if p is None else (p.get("reachable") if isinstance(p, dict) else "error"))
        return out

    async def resolve(self, job: Job) -> None:
        inc = await self._incident(job.incident_id)
        if inc.status != "resolved":
            inc = await asyncio.to_thread(self.store.update_incident, inc.id, status="resolved",
                                          resolved_at=time.time())
        log.info("incident=%s event=resolved", inc.id)
        borrowed = self.borrowed(inc)
        await self._enqueue(inc.id, "root:resolved", "update", self.render_root(inc), None, borrowed)
        await self._enqueue(inc.id, "resolved", "reply", report.render_resolved(inc.to_dict()), None, borrowed)
