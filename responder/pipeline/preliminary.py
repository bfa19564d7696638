"""Stage *preliminary*: a verdict at the alert's receipt, before any probe attaches.

An alert arrives well after its burn began (the burn-rate windows need time to fill), and the
agents' flight recorders have been counting all along. So the moment the scope is known, the
responder asks the agents for their recorder's view of the burn so far (``source: recorder``:
nothing attaches, it answers in milliseconds), reads traces and Prometheus over the same window,
attributes with the same engine and calibration as the capture's verdict, and posts the result
marked preliminary. The capture that follows (the *gather*, *attribute* and *report* stages)
edits that same reply in place: confirmed, or changed and why.

Only for alerts: an ad hoc capture was asked for by a person, who waits for it. A preliminary
verdict is stored on the incident (``preliminary``) beside the capture's, never in its place:
``verdict`` stays the capture's, as before.
"""
from __future__ import annotations

import asyncio
import logging
import time

from capture.attribution.verdict import Verdict
from responder.pipeline.attribute import Attribute
from responder.pipeline.gather import Gather
from responder.pipeline.stage import Context
from responder.pipeline.thread import ThreadWriter
from responder.render import thread as render

log = logging.getLogger(__name__)

# The traces and Prometheus read for a preliminary verdict cover at least this much of the burn.
MIN_WINDOW_S = 1.0


def attribution_step(job_id: int) -> str:
    """The outbox step of a job's attribution reply: posted once (preliminary or not), then edited."""
    return f"attribution:{job_id}"


class Preliminary:
    name = "preliminary"

    def __init__(self, gather: Gather, attribute: Attribute, thread: ThreadWriter, enabled: bool = True) -> None:
        self.gather = gather
        self.attribute = attribute
        self.thread = thread
        self.enabled = enabled

    async def run(self, ctx: Context) -> None:
        inc, playbook = ctx.incident, ctx.playbook
        if not self.enabled or playbook is None or inc.source != "alert":
            return
        done = inc.preliminary or {}
        if done.get("job") == ctx.job.id and isinstance(done.get("verdict"), dict):
            # A job restarted after its preliminary verdict was stored (and its reply enqueued):
            # the capture's verdict is compared with what was posted, not with a second reading.
            ctx.preliminary = Verdict.from_dict(done["verdict"])
            ctx.onset = done["window"][0]
            return
        t0 = time.time()
        ctx.onset = await self.gather.burn_began(inc, playbook, ctx.labels)
        if ctx.onset is None:
            return  # no firing alert to date the burn by
        gaps = list(ctx.gaps)
        (capture, gap), evidence = await asyncio.gather(
            self.gather.capture(ctx, playbook, MIN_WINDOW_S, source="recorder"),
            self.gather.application_evidence(inc, playbook, ctx.labels, t0, ctx.onset, MIN_WINDOW_S))
        if gap:
            gaps.append(gap)
        verdict = self.attribute.verdict(ctx, capture, evidence["traces"], gaps)
        ctx.preliminary = verdict
        at = time.time()
        earlier = done.get("first_at") or done.get("at")
        ctx.incident = inc = await asyncio.to_thread(self.thread.store.update_incident, inc.id, preliminary={
            # received_at: when the notification that started this job arrived; first_at: the
            # incident's first preliminary post (an alert that joins later starts another job)
            "verdict": verdict.to_dict(), "at": at, "received_at": ctx.job.created_at,
            "first_at": min(earlier, at) if earlier else at, "job": ctx.job.id, "window": [ctx.onset, t0],
            "capture": capture.to_dict() if capture else None, "evidence": evidence, "took_s": round(at - t0, 3)})
        log.info("incident=%s event=preliminary domains=%s confidence=%.2f took_s=%.2f", inc.id,
                 ",".join(verdict.domains), verdict.confidence, at - t0)
        await self.thread.enqueue(inc.id, f"root:preliminary:{ctx.job.id}", "update", self.thread.render_root(inc),
                                  None, ctx.borrowed)
        await self.thread.enqueue(
            inc.id, attribution_step(ctx.job.id), "reply",
            render.render_attribution(inc.to_dict(), verdict, capture, ctx.runbooks, self.thread.incident_url(inc.id),
                                      pending_capture_s=ctx.duration_s),
            None, ctx.borrowed)
