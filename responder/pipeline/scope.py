"""Stage *scope*: what the capture is about. On Kubernetes, the pods the alert's workload labels
name (their UIDs and, when a container is named, its ids); on a plain host, the process, cgroup,
port or container id labels the playbook names. A scope that cannot be made is a gap, said in words, not an error:
the investigation goes on with the evidence it can still read.
"""
from __future__ import annotations

import asyncio
import logging

from capture.schemas import CONTAINER_ID_FORMS, CaptureTarget, checked_container_id
from responder.kube.cluster import KubeCluster, KubeUnavailable, Scope, ScopeError, named_workloads, workload_label_names
from responder.pipeline.stage import Context
from responder.playbooks import ScopeSpec

log = logging.getLogger(__name__)


def scope_from_labels(spec: ScopeSpec, labels: dict[str, str], kube: KubeCluster | None = None) -> Scope:
    """The capture target the playbook's scope spec makes of an alert's labels; ScopeError
    says what is missing."""
    if kube is not None:
        if not named_workloads(spec, labels):
            raise ScopeError("no workload label on the alert: expected a namespace and one of "
                             + (", ".join(workload_label_names(spec)) or "(the playbook names no Kubernetes labels)"))
        return kube.resolve(spec, labels)
    target = CaptureTarget()
    pid = spec.first_present(spec.pid_labels, labels)
    if pid is not None:
        if not pid.isdigit():
            raise ScopeError(f"label pid={pid!r} is not a process id")
        target.pids.append(int(pid))
    cgroup = spec.first_present(spec.cgroup_labels, labels)
    if cgroup is not None:
        target.cgroups.append(cgroup)
    port = spec.first_present(spec.port_labels, labels)
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ScopeError(f"label port={port!r} is not a TCP port")
        target.ports.append(int(port))
    cid = spec.first_present(spec.container_id_labels, labels)
    if cid is not None:
        if (bare := checked_container_id(cid)) is None:
            raise ScopeError(f"label container_id={cid!r} is not a container id ({CONTAINER_ID_FORMS}, with or "
                             "without a runtime prefix)")
        target.containers.append(bare)
    if target.is_empty():
        if workloads := named_workloads(spec, labels):
            named = ", ".join(f"{label}={value}" for _, label, value in workloads)
            host = ", ".join([*spec.pid_labels, *spec.cgroup_labels, *spec.port_labels, *spec.container_id_labels])
            raise ScopeError(f"the alert names {named}, which only Kubernetes resolves to pods, but this responder "
                             "does not use Kubernetes (LLMSLO_AGENT_DISCOVERY=kubernetes); on a plain host add a "
                             f"pid, cgroup, port or container id label ({host})")
        wanted = [*spec.pid_labels, *spec.cgroup_labels, *spec.port_labels, *spec.container_id_labels]
        raise ScopeError(f"no scope label on the alert: expected one of {', '.join(wanted)}")
    return Scope(target=target, pods=[], description=target.describe())


class ScopeStage:
    name = "scope"

    def __init__(self, kube: KubeCluster | None = None) -> None:
        self.kube = kube

    async def run(self, ctx: Context) -> None:
        if ctx.playbook is None:
            return
        try:
            ctx.scope = await asyncio.to_thread(scope_from_labels, ctx.playbook.scope, ctx.labels, self.kube)
        except (ScopeError, KubeUnavailable) as e:
            ctx.gaps.append(f"could not scope the capture: {e}")
            return
        log.info("incident=%s event=scope %s", ctx.incident.id, "; ".join([ctx.scope.description, *ctx.scope.notes]))
