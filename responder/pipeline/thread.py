"""The incident's chat thread as the stages write it: messages go into the store's outbox (one
per sink), never straight to chat; delivery sends them later, once each, in order."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from responder.config import Settings
from responder.model import adhoc
from responder.playbooks import NOTIFY_PAGE, NOTIFY_WAIT, Playbook
from responder.render import thread as render
from responder.store.base import Incident, StoreBase


class ThreadWriter:
    def __init__(self, store: StoreBase, sinks: list[str], settings: Settings,
                 on_enqueued: Callable[[], None] = lambda: None, playbooks: list[Playbook] | None = None) -> None:
        self.store = store
        self.sinks = sinks
        self.settings = settings
        self.on_enqueued = on_enqueued
        # playbook name -> how its incidents reach chat (page, quiet, wait)
        self.notify_modes = {p.name: p.notify for p in playbooks or []}

    def notify(self, inc: Incident) -> str:
        """How this incident reaches chat: its playbook's notify mode (page for none)."""
        return self.notify_modes.get(inc.playbook or "", NOTIFY_PAGE)

    def incident_url(self, incident_id: str) -> str:
        return f"{self.settings.base_url}/incidents/{incident_id}"

    async def enqueue(self, incident_id: str, step: str, op: str, message: render.Message,
                      channel: str | None = None, borrowed: frozenset[str] = frozenset(),
                      file: dict[str, str] | None = None, of: str | None = None) -> None:
        """Persist one message per sink. A sink in ``borrowed`` answers in someone else's thread
        (an ad hoc capture asked for from an incident's thread): it gets replies only, and never
        touches that thread's root. Op ``edit`` replaces the reply enqueued at step ``of``. An
        incident of a playbook that waits (notify: wait) writes nothing: its verdict reaches chat
        in the thread of the page that joins it."""
        if NOTIFY_WAIT in self.notify_modes.values():
            inc = await asyncio.to_thread(self.store.get_incident, incident_id)
            if inc is not None and self.notify(inc) == NOTIFY_WAIT:
                return
        body: dict[str, Any] = {"op": op, "message": message.to_dict(), "channel": channel}
        if file is not None:
            body["file"] = file
        if of is not None:
            body["of"] = of
        for sink in self.sinks:
            if sink in borrowed and op not in ("reply", "edit"):
                continue
            await asyncio.to_thread(self.store.enqueue_message, incident_id, sink, step, body)
        self.on_enqueued()

    def render_root(self, inc: Incident) -> render.Message:
        """The root; a quiet playbook's mentions no one."""
        mention = self.settings.slack_mention_label if self.notify(inc) == NOTIFY_PAGE else None
        return render.render_root(inc.to_dict(), self.incident_url(inc.id), mention)

    def borrowed(self, inc: Incident) -> frozenset[str]:
        """The sinks in which this incident answers inside another incident's thread: the one a
        person asked from, or the early warning's that a page joined."""
        r = adhoc.options(inc.alerts).reply_to
        asked = {r["sink"]} if r and r["sink"] in self.sinks else set()
        recorded = {sink for sink, ref in (inc.thread or {}).items() if sink in self.sinks and ref.get("borrowed_from")}
        return frozenset(asked | recorded)

    async def borrow(self, inc: Incident) -> frozenset[str]:
        """For a capture asked for inside a thread: record that thread as the incident's own for
        its sink, so the replies land there; the sinks whose thread is borrowed."""
        borrowed = self.borrowed(inc)
        r = adhoc.options(inc.alerts).reply_to
        if borrowed and r is not None and (inc.thread or {}).get(r["sink"]) is None:
            await asyncio.to_thread(self.store.update_incident, inc.id, thread={
                r["sink"]: {"channel": r["channel"], "ts": r["ts"], "borrowed_from": r.get("incident_id") or "?"}})
        return borrowed

    def route(self, labels: dict[str, str], playbook: Playbook | None) -> str | None:
        """The channel for a new thread: the alert's channel label, else the playbook's, else the default."""
        return (labels.get(self.settings.slack_channel_label) or (playbook.channel if playbook else None)
                or self.settings.slack_channel)
