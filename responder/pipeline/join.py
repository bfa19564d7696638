"""Stage *join*: a page for a workload that an early warning is already investigating joins it.

An early warning is an open incident of a playbook that does not page (``notify: quiet`` or
``wait``), such as the capture agents' kernel early warning. When an alert of a paging playbook
arrives and its scope shares a pod, container, cgroup or process with such an incident opened
within JOIN_WINDOW_S, the page is that trouble's consequence:

- the early warning posted a thread (quiet): the page answers inside it, as a reply that says the
  SLO is burning now and mentions whom the page names; the page's own verdict follows there;
- the early warning waited (posted nothing): the page opens its own thread, and its first reply is
  the early warning's verdict and how long before the page it began.

Either way the page's incident records the early warning (``evidence.early_warning``: incident,
when it warned, when its trouble began, how long before the page, its verdict), so the lab can
measure the lead; and the page's baselines end where that trouble began, not where its SLO
started burning (a cause comes before its symptom).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from responder.kube.cluster import KubeCluster, KubeUnavailable, ScopeError
from responder.pipeline.gather import baseline_end
from responder.pipeline.scope import scope_from_labels
from responder.pipeline.stage import Context, alert_labels
from responder.pipeline.thread import ThreadWriter
from responder.playbooks import NOTIFY_PAGE, NOTIFY_QUIET, Playbook
from responder.render import thread as render
from responder.store.base import Incident, StoreBase

log = logging.getLogger(__name__)

# An early warning older than this is another episode, not the one the page is about.
JOIN_WINDOW_S = 3600.0
# How many open incidents are looked at for one page (newest first).
MAX_CANDIDATES = 200


def _keys(target: Any) -> set[tuple[str, str]]:
    """What a capture target names, as comparable keys."""
    return ({("pod", p) for p in target.pods} | {("container", c.split("://")[-1]) for c in target.containers}
            | {("cgroup", c.rstrip("/")) for c in target.cgroups} | {("pid", str(p)) for p in target.pids})


class JoinEarlyWarning:
    name = "join"

    def __init__(self, store: StoreBase, thread: ThreadWriter, playbooks: list[Playbook],
                 kube: KubeCluster | None = None) -> None:
        self.store = store
        self.thread = thread
        self.playbooks = {p.name: p for p in playbooks}
        self.kube = kube

    async def run(self, ctx: Context) -> None:
        inc = ctx.incident
        if (ctx.playbook is None or ctx.playbook.notify != NOTIFY_PAGE or inc.source != "alert" or ctx.scope is None
                or ctx.borrowed):
            return
        recorded = (inc.evidence or {}).get("early_warning")
        early = None
        if recorded:  # a restarted job: the same early warning as before
            early = await asyncio.to_thread(self.store.get_incident, recorded["incident"])
        else:
            early = await self._find(inc, _keys(ctx.scope.target))
        if early is None:
            return
        ctx.evidence["early_warning"] = info = recorded or {
            "incident": early.id, "warned_at": early.created_at, "lead_s": round(inc.created_at - early.created_at, 3),
            # where its trouble began: the page's baselines end there too (stage gather)
            "began_at": baseline_end(early) or early.created_at,
            "alertname": alert_labels(early).get("alertname", ""), "verdict": early.verdict,
            "preliminary": (early.preliminary or {}).get("verdict"),
        }
        own = {sink: ref for sink, ref in (early.thread or {}).items()
               if sink in self.thread.sinks and ref.get("ts") and not ref.get("borrowed_from")}
        mode = self.playbooks[early.playbook].notify if early.playbook in self.playbooks else NOTIFY_QUIET
        info["joined"] = "thread" if own and mode == NOTIFY_QUIET else "reply"
        ctx.incident = await asyncio.to_thread(self.store.update_incident, inc.id, evidence=dict(inc.evidence or {}) | {
            "early_warning": info})
        if info["joined"] == "thread":
            ctx.incident = await asyncio.to_thread(self.store.update_incident, inc.id, thread={
                sink: {"channel": ref.get("channel"), "ts": ref["ts"], "borrowed_from": early.id}
                for sink, ref in own.items()})
            ctx.borrowed = frozenset(own)
        log.info("incident=%s event=joined_early_warning early=%s lead_s=%.1f how=%s", inc.id, early.id,
                 info["lead_s"], info["joined"])

    async def _find(self, inc: Incident, keys: set[tuple[str, str]]) -> Incident | None:
        """The newest open early-warning incident whose scope shares a key with ``keys``."""
        if not keys:
            return None
        candidates = await asyncio.to_thread(self.store.list_incidents, MAX_CANDIDATES, "firing")
        for other in candidates:
            playbook = self.playbooks.get(other.playbook or "")
            if (other.id == inc.id or playbook is None or playbook.notify == NOTIFY_PAGE
                    or not 0 <= inc.created_at - other.created_at <= JOIN_WINDOW_S):
                continue
            try:
                scope = await asyncio.to_thread(scope_from_labels, playbook.scope, alert_labels(other), self.kube)
            except (ScopeError, KubeUnavailable):
                continue
            if keys & _keys(scope.target):
                return other
        return None


def early_warning_reply(ctx: Context, thread: ThreadWriter) -> render.Message | None:
    """The reply that joins a page to its early warning (see the module's docstring), or None."""
    info = ctx.evidence.get("early_warning")
    if not info:
        return None
    mention = render.mention_markup(ctx.labels.get(thread.settings.slack_mention_label or "")) \
        if thread.settings.slack_mention_label else None
    return render.render_joined(ctx.incident.to_dict(), info, thread.incident_url(ctx.incident.id),
                                thread.incident_url(info["incident"]), mention, in_its_thread=info["joined"] == "thread")
