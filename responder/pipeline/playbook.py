"""Stage *playbook*: which playbook handles the alert (by its labels), recorded on the incident."""
from __future__ import annotations

import asyncio
import logging

from responder.pipeline.stage import Context
from responder.playbooks import Playbook, select_playbook
from responder.store.base import StoreBase

log = logging.getLogger(__name__)


class SelectPlaybook:
    name = "playbook"

    def __init__(self, store: StoreBase, playbooks: list[Playbook]) -> None:
        self.store = store
        self.playbooks = playbooks

    async def run(self, ctx: Context) -> None:
        ctx.playbook = select_playbook(self.playbooks, ctx.labels)
        ctx.incident = await asyncio.to_thread(self.store.update_incident, ctx.incident.id,
                                               playbook=ctx.playbook.name if ctx.playbook else None)
        log.info("incident=%s event=investigate job=%s playbook=%s", ctx.incident.id, ctx.job.id,
                 ctx.playbook.name if ctx.playbook else None)
