"""The workload people name for a Kubernetes pod, one rule for the agent and the responder.

A pod's controller (its ``ownerReference`` with ``controller: true``) is what created it. For a
ReplicaSet or a Job that is not what people call the workload: a Deployment owns the ReplicaSet
and a CronJob owns the Job, so the rule climbs one more step for those two kinds. Every other
controller (StatefulSet, DaemonSet, a Job nobody scheduled, a custom controller) is the workload.
Objects are the Kubernetes client's models or anything with the same attribute names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Controllers whose own controller is the workload people name.
INDIRECT_KINDS = ("ReplicaSet", "Job")

Owner = tuple[str, str]  # (kind, name)


def controller(obj: Any) -> Owner | None:
    """``obj``'s controlling owner (kind, name), or None when it has none."""
    refs = getattr(getattr(obj, "metadata", None), "owner_references", None) or []
    ref = next((r for r in refs if r.controller), None)
    return (ref.kind, ref.name) if ref is not None else None


def workload_of(pod: Any, owner_of: Callable[[str, str, str], Owner | None]) -> Owner | None:
    """The workload that runs ``pod``: its controller, or for a ReplicaSet or Job that
    controller's own controller (``owner_of(namespace, kind, name)``; None when it has none or
    cannot be read, and then the direct controller is the answer). None for a bare pod."""
    ctrl = controller(pod)
    if ctrl is None or ctrl[0] not in INDIRECT_KINDS:
        return ctrl
    return owner_of(pod.metadata.namespace, *ctrl) or ctrl
