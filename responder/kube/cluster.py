"""Kubernetes for the responder: which pods an alert is about, where they run, and the capture
agent on each of those nodes.

- **Scope**: the labels a playbook names (``namespace`` with one of ``pod``, ``deployment``,
  ``statefulset``, ``daemonset``, ``job``, ``service``, and optionally ``container``) become
  pods: by name, by their workload (``common.workload``: a Deployment through its ReplicaSets, a
  CronJob through its Jobs, else the pod's controller), or by a Service's selector. A capture
  target names them by pod UID and container id; each agent turns those into cgroup ids on its
  node (``capture.identity.kube_cgroups``).
- **Agents**: the agent DaemonSet's pods (a label selector in the agent namespace), one per node
  (``spec.nodeName``), reached at the pod IP on the container port named ``api``.
- **Fan-out**: a capture goes to every target node's agent at once; the results are combined
  (``CaptureResult.combine``) with each pod and each node's outcome, and a node without an agent,
  or whose agent fails, is reported, never dropped.

Reads come from a watch-based cache: one informer per resource (pods, services, replicasets,
jobs, all namespaces) lists once, then watches from that list's resourceVersion, and lists again when the
watch's history is gone (410) or the connection breaks. An alert storm reads memory, not the API
server. RBAC needed: get/list/watch on pods, services, apps/replicasets and batch/jobs.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capture.client import AgentError, HttpAgentClient
from capture.schemas import CaptureRequest, CaptureResult, CaptureTarget, RequestError, container_id
from common.workload import Owner, controller, workload_of

if TYPE_CHECKING:  # kubernetes is imported late, where it is used
    from kubernetes.watch import Watch

log = logging.getLogger(__name__)

# The server ends a watch after this long; the informer opens the next one from where it was.
WATCH_TIMEOUT_S = 240
# How long a scope resolution waits for the first list of a resource.
SYNC_TIMEOUT_S = 10.0
# A capture reaches at most this many nodes (the rest are reported as skipped), this many at once.
MAX_NODES = 32
MAX_PARALLEL_NODES = 16


class ScopeError(ValueError):
    """The alert's labels do not name a workload this responder can capture."""


class KubeUnavailable(RuntimeError):
    """The Kubernetes API could not be read (the first list has not succeeded)."""


class Informer:
    """One resource kind, all namespaces, kept current by list + watch in a daemon thread."""

    def __init__(self, name: str, list_fn: Callable[..., Any], watch_timeout_s: int = WATCH_TIMEOUT_S):
        self.name = name
        self.list_fn = list_fn
        self.watch_timeout_s = watch_timeout_s
        self.lists = 0  # full lists made (one at start, one per lost watch history)
        self.watches = 0  # watch requests opened
        self.error: str | None = None
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def items(self, timeout: float = SYNC_TIMEOUT_S) -> list[Any]:
        self.start()
        if not self._synced.wait(timeout):
            raise KubeUnavailable(f"Kubernetes API: could not list {self.name}: {self.error or 'no answer yet'}")
        with self._lock:
            return list(self._items.values())

    @staticmethod
    def _key(obj: Any) -> str:
        return obj.metadata.uid or f"{obj.metadata.namespace}/{obj.metadata.name}"

    def _run(self) -> None:
        from kubernetes.client.rest import ApiException

        backoff = 0.5
        while not self._stop.is_set():
            try:
                version = self._list()
                backoff = 0.5
                while not self._stop.is_set():
                    version = self._watch_from(version)
            except ApiException as e:
                if self._stop.is_set():
                    return
                if e.status == 410:  # the watch's history is gone: list again
                    log.info("event=kube_watch_expired resource=%s", self.name)
                    continue
                self._failed(f"{e.status} {e.reason}")
            except Exception as e:  # connection refused or reset, timeouts
                if self._stop.is_set():  # closed under a watch: not a failure
                    return
                self._failed(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)

    def _failed(self, error: str) -> None:
        self.error = error
        log.warning("event=kube_informer_failed resource=%s error=%s", self.name, error)

    def _list(self) -> str:
        resp = self.list_fn(_request_timeout=SYNC_TIMEOUT_S)
        self.lists += 1
        items = {self._key(o): o for o in resp.items or []}
        with self._lock:
            self._items = items
        self.error = None
        self._synced.set()
        return resp.metadata.resource_version

    def _watch_from(self, version: str) -> str:
        from kubernetes import watch

        w = watch.Watch()
        self._watch = w
        self.watches += 1
        for event in w.stream(self.list_fn, resource_version=version, allow_watch_bookmarks=True,
                              timeout_seconds=self.watch_timeout_s,
                              _request_timeout=(SYNC_TIMEOUT_S, self.watch_timeout_s + 30)):
            kind, obj = event["type"], event["object"]
            if kind in ("ADDED", "MODIFIED"):
                with self._lock:
                    self._items[self._key(obj)] = obj
            elif kind == "DELETED":
                with self._lock:
                    self._items.pop(self._key(obj), None)
        return w.resource_version or version


@dataclass
class PodRef:
    """A target pod as the API server sees it."""

    namespace: str
    name: str
    uid: str
    node: str | None
    phase: str | None
    workload_kind: str | None
    workload: str | None
    containers: dict[str, str] = field(default_factory=dict)  # name -> container id (no prefix)

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid, "node": self.node,
                "workload_kind": self.workload_kind, "workload": self.workload,
                "containers": sorted(self.containers)}


@dataclass
class Scope:
    """What an alert resolved to: the capture target and what was left out, and why."""

    target: CaptureTarget
    pods: list[PodRef]
    description: str
    notes: list[str] = field(default_factory=list)


@dataclass
class AgentPod:
    node: str
    name: str
    url: str | None  # None: not ready
    why_not: str = ""


# Label -> the kind of object it names, in the order a scope prefers them (the most specific first).
WORKLOAD_KINDS = (("pod_label", "Pod"), ("deployment_label", "Deployment"), ("statefulset_label", "StatefulSet"),
                  ("daemonset_label", "DaemonSet"), ("job_label", "Job"), ("service_label", "Service"))


def workload_label_names(spec: Any) -> list[str]:
    """The workload labels the playbook reads, the most specific first."""
    return [getattr(spec, attr) for attr, _ in WORKLOAD_KINDS if getattr(spec, attr)]


def named_workloads(spec: Any, labels: dict[str, str]) -> list[tuple[str, str, str]]:
    """(kind, label, value) of each workload label the playbook reads that the alert carries,
    the most specific first."""
    return [(kind, getattr(spec, attr), labels[getattr(spec, attr)]) for attr, kind in WORKLOAD_KINDS
            if getattr(spec, attr) and labels.get(getattr(spec, attr))]


def names_workload(spec: Any, labels: dict[str, str]) -> bool:
    """Whether the alert carries one of the workload labels the playbook reads."""
    return bool(named_workloads(spec, labels))


def parse_selector(text: str) -> dict[str, str]:
    """``a=b,c=d`` (equality only, as the agent DaemonSet's matchLabels are written)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"agent selector: {part!r} is not key=value")
        out[key.strip()] = value.strip().lstrip("=")
    return out


class KubeCluster:
    """Pods, services, ReplicaSets and Jobs from the API, and what the responder derives from them."""

    def __init__(self, api_client: Any, *, agent_namespace: str, agent_selector: dict[str, str],
                 agent_port_name: str = "api", agent_port: int = 8081, watch_timeout_s: int = WATCH_TIMEOUT_S):
        from kubernetes import client

        core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        self.api_client = api_client
        self.pods = Informer("pods", core.list_pod_for_all_namespaces, watch_timeout_s)
        self.services = Informer("services", core.list_service_for_all_namespaces, watch_timeout_s)
        self.replicasets = Informer("replicasets", apps.list_replica_set_for_all_namespaces, watch_timeout_s)
        self.jobs = Informer("jobs", client.BatchV1Api(api_client).list_job_for_all_namespaces, watch_timeout_s)
        self.agent_namespace = agent_namespace
        self.agent_selector = agent_selector
        self.agent_port_name = agent_port_name
        self.agent_port = agent_port

    @classmethod
    def from_settings(cls, settings: Any) -> KubeCluster:
        from capture.kube import api_client

        api = api_client(settings.kube_api_url, settings.kube_token, settings.kubeconfig, settings.kube_ca_file)
        return cls(api, agent_namespace=settings.agent_namespace,
                   agent_selector=parse_selector(settings.agent_selector), agent_port=settings.agent_port)

    def start(self) -> None:
        for inf in (self.pods, self.services, self.replicasets, self.jobs):
            inf.start()

    def close(self) -> None:
        for inf in (self.pods, self.services, self.replicasets, self.jobs):
            inf.stop()
        self.api_client.close()

    def stats(self) -> dict[str, dict[str, Any]]:
        return {i.name: {"lists": i.lists, "watches": i.watches, "error": i.error}
                for i in (self.pods, self.services, self.replicasets, self.jobs)}

    # --- scope ---------------------------------------------------------------------------------
    def resolve(self, spec: Any, labels: dict[str, str]) -> Scope:
        """The pods an alert's labels name (ScopeError when there are none to capture)."""
        named = named_workloads(spec, labels)
        if not named:
            raise ScopeError("the alert names no pod, workload or service the playbook reads")
        kind, _, name = named[0]
        ns_label = spec.namespace_label
        namespace = labels.get(ns_label) if ns_label else None
        if not namespace:
            raise ScopeError(f"the alert names {kind.lower()} {name!r} but not its namespace"
                             + (f" (label {ns_label!r})" if ns_label else " (the playbook names no namespace_label)"))
        what = f"{kind.lower()} {namespace}/{name}"
        pods = self.pods.items()
        owners = self._owners()
        if kind == "Service":
            svc = next((s for s in self.services.items()
                        if s.metadata.namespace == namespace and s.metadata.name == name), None)
            if svc is None:
                raise ScopeError(f"{what}: no such Service")
            selector = (svc.spec.selector if svc.spec else None) or {}
            if not selector:
                raise ScopeError(f"{what}: the Service has no selector, so it names no pods")
            chosen = [p for p in pods if p.metadata.namespace == namespace
                      and all((p.metadata.labels or {}).get(k) == v for k, v in selector.items())]
        elif kind == "Pod":
            chosen = [p for p in pods if p.metadata.namespace == namespace and p.metadata.name == name]
        else:
            # The alert may name the workload (a CronJob, a Deployment) or its pods' direct
            # controller (a Job a CronJob started).
            chosen = [p for p in pods if p.metadata.namespace == namespace
                      and (kind, name) in (controller(p), _workload(p, owners))]
        if not chosen:
            raise ScopeError(f"{what}: no pods")
        refs = sorted((_pod_ref(p, owners) for p in chosen), key=lambda r: (r.node or "", r.name))
        notes, target, kept = [], CaptureTarget(), []
        container = labels.get(spec.container_label) if spec.container_label else None
        for ref in refs:
            if ref.phase != "Running" or not ref.node:
                notes.append(f"pod {ref.namespace}/{ref.name} is {ref.phase or 'unknown'}"
                             f"{'' if ref.node else ', not scheduled'}: not captured")
                continue
            if container:
                if container not in ref.containers:
                    notes.append(f"pod {ref.namespace}/{ref.name} has no running container {container!r}")
                    continue
                target.containers.append(ref.containers[container])
            target.pods.append(ref.uid)
            kept.append(ref)
        if not kept:
            raise ScopeError(f"{what}: none of its {len(refs)} pod(s) can be captured: " + "; ".join(notes))
        suffix = f", container {container}" if container else ""
        return Scope(target=target, pods=kept, notes=notes,
                     description=f"{what}{suffix}: {len(kept)} pod(s) on {len({r.node for r in kept})} node(s)")

    def _owners(self) -> dict[tuple[str, str, str], Owner]:
        """(namespace, kind, name) -> controller, for every ReplicaSet and Job in the cache."""
        out = {}
        for kind, inf in (("ReplicaSet", self.replicasets), ("Job", self.jobs)):
            for obj in inf.items():
                ctrl = controller(obj)
                if ctrl is not None:
                    out[(obj.metadata.namespace, kind, obj.metadata.name)] = ctrl
        return out

    def pods_by_uid(self, uids: list[str]) -> dict[str, PodRef]:
        owners = self._owners()
        wanted = set(uids)
        return {p.metadata.uid: _pod_ref(p, owners) for p in self.pods.items() if p.metadata.uid in wanted}

    # --- agents --------------------------------------------------------------------------------
    def agents(self) -> dict[str, AgentPod]:
        """The agent pod on each node (a ready one when a rollout has two)."""
        out: dict[str, AgentPod] = {}
        for p in self.pods.items():
            labels = p.metadata.labels or {}
            if p.metadata.namespace != self.agent_namespace or \
                    any(labels.get(k) != v for k, v in self.agent_selector.items()):
                continue
            node = p.spec.node_name if p.spec else None
            if not node:
                continue
            agent = AgentPod(node=node, name=p.metadata.name, url=None)
            ip = p.status.pod_ip if p.status else None
            phase = p.status.phase if p.status else None
            if p.metadata.deletion_timestamp is not None:
                agent.why_not = f"agent pod {p.metadata.name} is terminating"
            elif not (phase == "Running" and ip):
                agent.why_not = f"agent pod {p.metadata.name} is {phase or 'not running'}"
            elif not _ready(p):
                agent.why_not = f"agent pod {p.metadata.name} is not ready"
            else:
                host = f"[{ip}]" if ":" in ip else ip
                agent.url = f"http://{host}:{self._port(p)}"
            if node not in out or (out[node].url is None and agent.url is not None):
                out[node] = agent
        return out

    def _port(self, pod: Any) -> int:
        for c in pod.spec.containers or []:
            for port in c.ports or []:
                if port.name == self.agent_port_name:
                    return port.container_port
        return self.agent_port


def _workload(pod: Any, owners: dict[tuple[str, str, str], Owner]) -> Owner | None:
    return workload_of(pod, lambda ns, kind, name: owners.get((ns, kind, name)))


def _pod_ref(pod: Any, owners: dict[tuple[str, str, str], Owner]) -> PodRef:
    kind, name = _workload(pod, owners) or (None, None)
    containers = {}
    for st in (pod.status.container_statuses or []) if pod.status else []:
        if st.container_id and st.state is not None and st.state.running is not None:
            containers[st.name] = container_id(st.container_id)
    return PodRef(namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid,
                  node=pod.spec.node_name if pod.spec else None, phase=pod.status.phase if pod.status else None,
                  workload_kind=kind, workload=name, containers=containers)


def _pod_counters(results: list[CaptureResult]) -> dict[str, dict[str, float]]:
    """pod UID -> {"probe.counter": total} from each node's per-cgroup counters: which pod the
    events came from. Only non-zero counters are kept."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        pod_of = {str(w["id"]): w.get("pod_uid") for w in r.workloads if w.get("pod_uid")}
        for name, pr in r.incident.items():
            for cg, counters in pr.by_cgroup.items():
                uid = pod_of.get(cg)
                if uid is None:
                    continue
                mine = out.setdefault(uid, {})
                for counter, value in counters.items():
                    if value:
                        mine[f"{name}.{counter}"] = mine.get(f"{name}.{counter}", 0.0) + value
    return out


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


class KubeAgents:
    """The responder's capture agent on Kubernetes: the same ``capture`` surface as one agent,
    fanned out to the agent on every node the target's pods run on."""

    def __init__(self, cluster: KubeCluster, token: str):
        self.cluster = cluster
        self.token = token

    async def start(self) -> None:
        self.cluster.start()

    async def close(self) -> None:
        await asyncio.to_thread(self.cluster.close)

    async def capture(self, req: CaptureRequest) -> CaptureResult:
        t = req.target
        if t.pids or t.cgroups or t.ports or not (t.pods or t.containers):
            raise RequestError("on Kubernetes a capture names pods (and optionally containers): pids, cgroups "
                               "and ports belong to one node")
        pods = await asyncio.to_thread(self.cluster.pods_by_uid, t.pods)
        agents = await asyncio.to_thread(self.cluster.agents)
        missing = [u for u in t.pods if u not in pods]
        if missing:
            raise RequestError(f"pod(s) {', '.join(missing)} are not known to the Kubernetes API")
        by_node: dict[str, list[PodRef]] = {}
        for uid in t.pods:
            by_node.setdefault(pods[uid].node or "(unscheduled)", []).append(pods[uid])
        nodes = sorted(by_node)
        gate = asyncio.Semaphore(MAX_PARALLEL_NODES)

        async def one(node: str) -> tuple[dict[str, Any], CaptureResult | None]:
            refs = by_node[node]
            outcome: dict[str, Any] = {"node": node, "agent": None, "status": "no agent", "error": None,
                                       "capture_id": None, "pods": [f"{r.namespace}/{r.name}" for r in refs]}
            if node not in nodes[:MAX_NODES]:
                outcome |= {"status": "skipped", "error": f"over the limit of {MAX_NODES} nodes per capture"}
                return outcome, None
            agent = agents.get(node)
            if agent is None or agent.url is None:
                outcome["error"] = agent.why_not if agent else f"no capture agent pod on node {node}"
                return outcome, None
            outcome["agent"] = agent.name
            ids = {c for r in refs for c in r.containers.values()}
            node_req = dataclasses.replace(req, target=CaptureTarget(
                pods=[r.uid for r in refs], containers=[c for c in t.containers if c in ids]))
            client = HttpAgentClient(agent.url, self.token)
            try:
                async with gate:
                    result = await client.capture(node_req)
            except (AgentError, RequestError) as e:
                outcome |= {"status": "failed", "error": str(e)}
                return outcome, None
            finally:
                await client.close()
            outcome |= {"status": "ok", "capture_id": result.id, "cost": result.cost.summary()}
            return outcome, result

        started = time.monotonic()
        done = await asyncio.gather(*(one(n) for n in nodes))
        outcomes = [o for o, _ in done]
        results = [r for _, r in done if r is not None]
        captured = {o["node"] for o in outcomes if o["status"] == "ok"}
        per_pod = _pod_counters(results)
        pod_list = [pods[u].to_dict() | {"captured": pods[u].node in captured, "counters": per_pod.get(u, {})}
                    for u in t.pods]
        log.info("event=fanout_capture nodes=%s ok=%s wall_s=%.1f", len(nodes), len(results),
                 time.monotonic() - started)
        if not results:
            raise AgentError("no node could capture: " + "; ".join(f"{o['node']}: {o['error']}" for o in outcomes))
        return CaptureResult.combine(results, nodes=outcomes, pods=pod_list)
