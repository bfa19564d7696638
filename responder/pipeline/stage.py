"""What every stage of an investigation shares: the ``Context`` it reads and fills, and the
``Stage`` protocol (a name and ``async run(ctx)``).

A stage reads what the stages before it put on the context and adds its own part. What a stage
learns that must survive a crash it also writes to the incident in the store before it returns,
so a restarted job repeats at most the stage that was in flight.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from capture.attribution.verdict import Verdict
from capture.schemas import CaptureResult
from responder.kube.cluster import Scope
from responder.model import adhoc
from responder.playbooks import Playbook
from responder.store.base import Incident, Job


@dataclass
class Context:
    """One investigation, as far as it got."""
    job: Job
    incident: Incident
    labels: dict[str, str]  # what the playbook matched on (see alert_labels)
    options: adhoc.Options  # an ad hoc request's duration, probes and thread, else empty
    borrowed: frozenset[str] = frozenset()  # sinks answering inside another incident's thread
    playbook: Playbook | None = None
    scope: Scope | None = None
    onset: float | None = None  # where the baselines end: the burn's onset, else startsAt
    capture: CaptureResult | None = None
    gaps: list[str] = field(default_factory=list)  # why kernel evidence is missing, in words
    evidence: dict[str, Any] = field(default_factory=lambda: {"prometheus": None, "traces": None})
    verdict: Verdict | None = None
    preliminary: Verdict | None = None  # posted at the alert's receipt, from the flight recorder

    @property
    def runbooks(self) -> list[dict[str, str]]:
        return [{"title": r.title, "url": r.url} for r in self.playbook.runbooks] if self.playbook else []

    @property
    def duration_s(self) -> float:
        """The capture's length: what an ad hoc request asked for, else the playbook's."""
        if self.options.duration_s:
            return self.options.duration_s
        return self.playbook.capture.duration_s if self.playbook else 0.0


def alert_labels(incident: Incident) -> dict[str, str]:
    """The labels a playbook matches on: the group's common labels, then the first firing alert's."""
    labels = dict(incident.labels or {})
    firing = [a for a in incident.alerts if a.get("status") == "firing"] or incident.alerts
    if firing:
        labels.update(firing[0].get("labels", {}))
    return labels


class Stage(Protocol):
    name: str

    async def run(self, ctx: Context) -> None: ...
