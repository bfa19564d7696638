"""The responder's path for one job, as explicit stages with typed inputs and outputs:

    investigate: playbook -> scope -> gather (kernel capture) -> attribute -> report (outbox)
    resolve:     mark resolved -> report (outbox)

Intake and dedup happened before (``responder.server`` and ``responder.store``); delivery of what
the report stage enqueues happens after (``responder.delivery``). Every stage's output is
persisted on the incident, so a crash re-runs at most the stage that was in flight.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Protocol

from capture.schemas import CaptureRequest, CaptureResult, CaptureTarget, RequestError
from responder import report
from responder.attribution import attribute
from responder.model import Verdict
from responder.playbooks import Playbook, ScopeSpec, select_playbook
from responder.store import Incident, IncidentStore, Job

log = logging.getLogger(__name__)


class AgentClient(Protocol):
    async def capture(self, req: CaptureRequest) -> CaptureResult: ...


class ScopeError(ValueError):
    """The alert's labels do not name a workload this responder can capture."""


def alert_labels(incident: Incident) -> dict[str, str]:
    """The labels a playbook matches on: the group's common labels, then the first firing alert's."""
    labels = dict(incident.labels or {})
    firing = [a for a in incident.alerts if a.get("status") == "firing"] or incident.alerts
    if firing:
        labels.update(firing[0].get("labels", {}))
    return labels


def scope_from_labels(spec: ScopeSpec, labels: dict[str, str]) -> CaptureTarget:
    """Stage *scope* on a plain host: the pid / cgroup / port labels the playbook names."""
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
        pod = labels.get(spec.pod_label or "") if spec.pod_label else None
        if pod:
            raise ScopeError(f"the alert names pod {pod!r}, but no Kubernetes API is configured on this "
                             "responder; add a pid, cgroup or port label, or configure Kubernetes")
        wanted = [*spec.pid_labels, *spec.cgroup_labels, *spec.port_labels]
        raise ScopeError(f"no scope label on the alert: expected one of {', '.join(wanted)}")
    return target


def baseline_end(incident: Incident) -> float | None:
    """The baseline ends where the burn began: the earliest firing alert's startsAt."""
    starts = []
    for a in incident.alerts:
        try:
            starts.append(datetime.fromisoformat(a["startsAt"].replace("Z", "+00:00")).timestamp())
        except (KeyError, ValueError, AttributeError):
            continue
    return min(starts) if starts else None


@dataclass
class Outcome:
    playbook: Playbook | None
    target: CaptureTarget | None
    capture: CaptureResult | None
    verdict: Verdict


class Pipeline:
    def __init__(self, store: IncidentStore, playbooks: list[Playbook], agent: AgentClient,
                 sinks: list[str], default_channel: str, base_url: str,
                 on_enqueued: Callable[[], None] = lambda: None):
        self.store = store
        self.playbooks = playbooks
        self.agent = agent
        self.sinks = sinks
        self.default_channel = default_channel
        self.base_url = base_url
        self.on_enqueued = on_enqueued

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
                       channel: str | None = None) -> None:
        body: dict[str, Any] = {"op": op, "message": message.to_dict(), "channel": channel}
        for sink in self.sinks:
            await asyncio.to_thread(self.store.enqueue_message, incident_id, sink, step, body)
        self.on_enqueued()

    async def investigate(self, job: Job) -> Outcome:
        inc = await self._incident(job.incident_id)
        labels = alert_labels(inc)
        # Stage: playbook.
        playbook = select_playbook(self.playbooks, labels)
        channel = (playbook.channel if playbook else None) or self.default_channel
        inc = await asyncio.to_thread(self.store.update_incident, inc.id,
                                      playbook=playbook.name if playbook else None)
        await self._enqueue(inc.id, "root", "root", report.render_root(inc.to_dict(), self.incident_url(inc.id)),
                            channel)
        log.info("incident=%s event=investigate job=%s playbook=%s", inc.id, job.id,
                 playbook.name if playbook else None)
        target = capture = None
        if playbook is None:
            verdict = Verdict(domains=[], confidence=0.0, abstain_reason="no playbook matches the alert's labels")
        else:
            try:
                # Stage: scope.
                target = scope_from_labels(playbook.scope, labels)
                # Stage: gather.
                req = CaptureRequest(target=target, probes=list(playbook.capture.probes),
                                     duration_s=playbook.capture.duration_s, baseline_s=playbook.capture.baseline_s,
                                     baseline_end=baseline_end(inc), incident_id=inc.id)
                capture = await self.agent.capture(req)
                # Stage: attribute.
                verdict = attribute(capture)
            except (ScopeError, RequestError) as e:
                verdict = Verdict(domains=[], confidence=0.0, abstain_reason=f"could not scope the capture: {e}")
            except Exception as e:  # agent unreachable or failed: say so in the thread
                log.exception("incident=%s event=capture_failed", inc.id)
                verdict = Verdict(domains=[], confidence=0.0, abstain_reason=f"the capture failed: {e}")
        inc = await asyncio.to_thread(self.store.update_incident, inc.id, verdict=verdict.to_dict(),
                                      capture=capture.to_dict() if capture else None)
        log.info("incident=%s event=attributed domains=%s confidence=%.2f abstain=%r", inc.id,
                 ",".join(verdict.domains), verdict.confidence, verdict.abstain_reason)
        # Stage: report.
        runbooks = [{"title": r.title, "url": r.url} for r in playbook.runbooks] if playbook else []
        await self._enqueue(inc.id, f"root:attributed:{job.id}", "update",
                            report.render_root(inc.to_dict(), self.incident_url(inc.id)))
        await self._enqueue(inc.id, f"attribution:{job.id}", "reply",
                            report.render_attribution(inc.to_dict(), verdict, capture, runbooks,
                                                      self.incident_url(inc.id)))
        return Outcome(playbook, target, capture, verdict)

    async def resolve(self, job: Job) -> None:
        inc = await self._incident(job.incident_id)
        if inc.status != "resolved":
            inc = await asyncio.to_thread(self.store.update_incident, inc.id, status="resolved",
                                          resolved_at=time.time())
        log.info("incident=%s event=resolved", inc.id)
        await self._enqueue(inc.id, "root:resolved", "update", report.render_root(inc.to_dict(), self.incident_url(inc.id)))
        await self._enqueue(inc.id, "resolved", "reply", report.render_resolved(inc.to_dict()))
