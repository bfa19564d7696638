"""Which playbook handles an alert: the one its ``llmslo_playbook`` label names, else the first, by
priority then file name, whose matchers all match."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from responder.playbooks.model import Playbook

# An alert (or an ad hoc capture) can name its playbook with this label instead of matching one.
PIN_LABEL = "llmslo_playbook"


def select_playbook(playbooks: Iterable[Playbook], labels: Mapping[str, str]) -> Playbook | None:
    """The playbook named by the ``llmslo_playbook`` label, else the first playbook, by priority
    then file name, whose matchers all match ``labels``."""
    playbooks = list(playbooks)
    pinned = labels.get(PIN_LABEL)
    if pinned:
        found = next((p for p in playbooks if p.name == pinned), None)
        if found is not None:
            return found
    return next((p for p in selection_order(playbooks) if p.matches(labels)), None)


def selection_order(playbooks: Iterable[Playbook]) -> list[Playbook]:
    return sorted(playbooks, key=lambda p: (-p.priority, p.source.name))
