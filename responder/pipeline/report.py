"""Stage *report*: the thread, written to the outbox. ``OpenThread`` runs once the playbook is
chosen and the scope made (a page may join an early warning's thread), so the thread's root says
"capturing" while the evidence is gathered; ``Report``
runs last: the root updated with the verdict, the attribution reply and the chart."""
from __future__ import annotations

import asyncio
import base64
import logging

from responder.pipeline.join import early_warning_reply
from responder.pipeline.preliminary import attribution_step
from responder.pipeline.stage import Context
from responder.pipeline.thread import ThreadWriter
from responder.render import chart
from responder.render import thread as render
from responder.render.view import IncidentView

log = logging.getLogger(__name__)


class OpenThread:
    name = "open-thread"

    def __init__(self, thread: ThreadWriter) -> None:
        self.thread = thread

    async def run(self, ctx: Context) -> None:
        inc = ctx.incident
        await self.thread.enqueue(inc.id, "root", "root", self.thread.render_root(inc),
                                  self.thread.route(ctx.labels, ctx.playbook), ctx.borrowed)
        joined = early_warning_reply(ctx, self.thread)
        if joined is not None:  # a page joining its early warning (stage join)
            await self.thread.enqueue(inc.id, "joined", "reply", joined, None, ctx.borrowed)
        elif ctx.borrowed:
            await self.thread.enqueue(inc.id, "requested", "reply",
                                      render.render_requested(inc.to_dict(), self.thread.incident_url(inc.id)),
                                      None, ctx.borrowed)


class Report:
    name = "report"

    def __init__(self, thread: ThreadWriter) -> None:
        self.thread = thread

    async def run(self, ctx: Context) -> None:
        inc, job = ctx.incident, ctx.job
        assert ctx.verdict is not None, "the attribute stage runs first"
        await self.thread.enqueue(inc.id, f"root:attributed:{job.id}", "update", self.thread.render_root(inc), None,
                                  ctx.borrowed)
        message = render.render_attribution(inc.to_dict(), ctx.verdict, ctx.capture, ctx.runbooks,
                                            self.thread.incident_url(inc.id), preliminary=ctx.preliminary)
        if ctx.preliminary is None:
            await self.thread.enqueue(inc.id, attribution_step(job.id), "reply", message, None, ctx.borrowed)
        else:  # the preliminary verdict's reply, replaced in place
            await self.thread.enqueue(inc.id, f"{attribution_step(job.id)}:final", "edit", message, None, ctx.borrowed,
                                      of=attribution_step(job.id))
        await self.chart(ctx, f"chart:{job.id}")

    async def chart(self, ctx: Context, step: str) -> None:
        """The incident page's chart as a PNG reply; nothing when there is no evidence to draw."""
        inc = ctx.incident
        try:
            png = await asyncio.to_thread(chart.png, IncidentView.of(inc.to_dict()))
        except Exception:  # a chart bug must not hold back the rest of the thread
            log.exception("incident=%s event=chart_failed", inc.id)
            return
        if png is None:
            return
        url = self.thread.incident_url(inc.id)
        await self.thread.enqueue(inc.id, step, "file", render.Message(text=f"Timeline: burn rate, kernel signals and the "
                                                                            f"incident's moments ({url})"), None, ctx.borrowed,
                                  file={"filename": f"{inc.id}-chart.png", "title": f"{inc.id} chart",
                                        "content_b64": base64.b64encode(png).decode()})
