"""The responder's path for one job, as explicit stages (``Stage``, one module each) over one
``Context``:

    investigate: playbook -> scope -> join (a page for a workload an early warning already
                 investigates joins it) -> open-thread -> preliminary (an alert's verdict at once,
                 from the flight recorders, traces and Prometheus) -> gather (kernel capture,
                 traces and Prometheus, concurrently) -> attribute -> report (outbox; edits the
                 preliminary reply in place)
    resolve:     mark resolved -> report (outbox)

Intake and dedup happened before (``responder.http.intake`` and the store); delivery of what the
report stage enqueues happens after (``responder.delivery``). Every stage's output is persisted
on the incident, so a crash re-runs at most the stage that was in flight.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from capture.attribution.verdict import Verdict
from capture.schemas import CaptureResult, CaptureTarget
from responder.attribution import calibration
from responder.config import Settings
from responder.evidence.traces.backends import TraceBackend
from responder.kube.cluster import KubeCluster
from responder.model import adhoc
from responder.pipeline.attribute import Attribute
from responder.pipeline.gather import AgentClient, Gather
from responder.pipeline.join import JoinEarlyWarning
from responder.pipeline.playbook import SelectPlaybook
from responder.pipeline.preliminary import Preliminary
from responder.pipeline.report import OpenThread, Report
from responder.pipeline.scope import ScopeStage
from responder.pipeline.stage import Context, Stage, alert_labels
from responder.pipeline.thread import ThreadWriter
from responder.playbooks import Playbook
from responder.render import thread as render
from responder.store.base import Incident, Job, StoreBase

log = logging.getLogger(__name__)


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
        self.settings = settings
        self.playbooks = playbooks
        self.thread = ThreadWriter(store, sinks, settings, on_enqueued, playbooks)
        gather = Gather(agent, settings, traces)
        attribute = Attribute(store, settings, calibration.load(settings.calibration_file))
        self.stages: Sequence[Stage] = (
            SelectPlaybook(store, playbooks),
            ScopeStage(kube),
            JoinEarlyWarning(store, self.thread, playbooks, kube),
            OpenThread(self.thread),
            Preliminary(gather, attribute, self.thread, enabled=settings.preliminary_verdict),
            gather,
            attribute,
            Report(self.thread),
        )

    def incident_url(self, incident_id: str) -> str:
        return self.thread.incident_url(incident_id)

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

    async def investigate(self, job: Job) -> Outcome:
        inc = await self._incident(job.incident_id)
        ctx = Context(job=job, incident=inc, labels=alert_labels(inc), options=adhoc.options(inc.alerts),
                      borrowed=await self.thread.borrow(inc))
        for stage in self.stages:
            await stage.run(ctx)
        assert ctx.verdict is not None, "the attribute stage always leaves a verdict"
        return Outcome(ctx.playbook, ctx.capture.target if ctx.capture else None, ctx.capture, ctx.verdict)

    async def acknowledge(self, incident_id: str, by: str) -> bool:
        """Record who acknowledged the incident and show it on the root; False when it already was."""
        inc = await self._incident(incident_id)
        if inc.acknowledged:
            return False
        inc = await asyncio.to_thread(self.store.update_incident, inc.id, acknowledged={"by": by, "at": time.time()})
        await self.thread.enqueue(inc.id, "root:acknowledged", "update", self.thread.render_root(inc), None,
                                  self.thread.borrowed(inc))
        return True

    async def resolve(self, job: Job) -> None:
        inc = await self._incident(job.incident_id)
        if inc.status != "resolved":
            inc = await asyncio.to_thread(self.store.update_incident, inc.id, status="resolved",
                                          resolved_at=time.time())
        log.info("incident=%s event=resolved", inc.id)
        borrowed = self.thread.borrowed(inc)
        await self.thread.enqueue(inc.id, "root:resolved", "update", self.thread.render_root(inc), None, borrowed)
        await self.thread.enqueue(inc.id, "resolved", "reply", render.render_resolved(inc.to_dict()), None, borrowed)
