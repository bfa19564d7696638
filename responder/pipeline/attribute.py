"""Stage *attribute*: the verdict from the gathered evidence (kernel capture, traces), with what
its score means as a probability (the lab's calibration), recorded on the incident with the evidence and the links."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from capture.attribution.verdict import Verdict
from capture.schemas import CaptureResult
from responder.attribution.calibration import Calibration
from responder.attribution.engine import attribute
from responder.config import Settings
from responder.pipeline.stage import Context
from responder.render import links
from responder.store.base import StoreBase

log = logging.getLogger(__name__)


class Attribute:
    name = "attribute"

    def __init__(self, store: StoreBase, settings: Settings, calibration: Calibration | None = None) -> None:
        self.store = store
        self.settings = settings
        self.calibration = calibration

    def verdict(self, ctx: Context, capture: CaptureResult | None, traces: dict[str, Any] | None,
                gaps: list[str]) -> Verdict:
        """The engine's verdict on this evidence, its confidence calibrated."""
        if ctx.playbook is None:
            return Verdict(domains=[], confidence=0.0, abstain_reason="no playbook matches the alert's labels")
        verdict = attribute(capture, traces=traces, trace_link=lambda tid: links.trace_url(self.settings, tid),
                            gaps=gaps)
        if self.calibration:
            self.calibration.apply(verdict)
        return verdict

    async def run(self, ctx: Context) -> None:
        verdict = self.verdict(ctx, ctx.capture, ctx.evidence["traces"], ctx.gaps)
        ctx.verdict = verdict
        incident_links = links.incident_links(self.settings, ctx.incident.to_dict(), ctx.evidence["prometheus"],
                                              ctx.evidence["traces"], ctx.runbooks)
        ctx.incident = await asyncio.to_thread(
            self.store.update_incident, ctx.incident.id, verdict=verdict.to_dict(),
            capture=ctx.capture.to_dict() if ctx.capture else None, evidence=ctx.evidence,
            links=incident_links, attributed_at=time.time())
        log.info("incident=%s event=attributed domains=%s confidence=%.2f abstain=%r", ctx.incident.id,
                 ",".join(verdict.domains), verdict.confidence, verdict.abstain_reason)
