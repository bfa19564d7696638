"""Workload identity from the Kubernetes API, when the agent is given one.

The cgroup path already says a process's container id and pod UID (capture.identity); the API
adds what people call the workload: the pod's name and namespace, the container's name, and the
owning workload (a ReplicaSet's Deployment, a StatefulSet, a DaemonSet, a Job's CronJob), plus
Service names for peer addresses (cluster IPs and pod IPs behind a selector).

Reads are bounded-TTL lists (pods on this node, services, endpoint slices), cached, so a burst
of captures costs one list per TTL. Only get/list on pods, services, endpointslices,
replicasets and jobs are used.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from capture.schemas import container_id
from common.workload import Owner, controller, workload_of

log = logging.getLogger(__name__)

CACHE_TTL_S = 30.0
# How the agent reads one controller's own controller (the rule is common.workload's).
_READ_OWNER = {"ReplicaSet": "read_namespaced_replica_set", "Job": "read_namespaced_job"}


@dataclass
class PodIdentity:
    uid: str
    name: str
    namespace: str
    node: str | None
    workload_kind: str | None
    workload: str | None
    containers: dict[str, str]  # container id (no runtime prefix) -> container name
    ip: str | None


class KubeIdentity:
    """Pods and services as the API server sees them, for one node."""

    def __init__(self, api_client, node_name: str | None = None, ttl_s: float = CACHE_TTL_S):
        from kubernetes import client  # imported late: only agents given an API need it

        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.discovery = client.DiscoveryV1Api(api_client)
        self.node = node_name
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._pods: dict[str, PodIdentity] = {}
        self._services: dict[str, str] = {}  # "ip:port" or "ip" -> "service.namespace"
        self._at = 0.0
        self._owners: dict[tuple[str, str, str], Owner | None] = {}
        self.error: str | None = None

    @classmethod
    def from_settings(cls, url: str | None, token: str | None, kubeconfig: str | None,
                      node_name: str | None, ca_file: str | None = None) -> KubeIdentity:
        return cls(api_client(url, token, kubeconfig, ca_file), node_name)

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._at < self.ttl_s:
                return
            try:
                selector = f"spec.nodeName={self.node}" if self.node else None
                pods = self.core.list_pod_for_all_namespaces(field_selector=selector, _request_timeout=10).items
                services = self.core.list_service_for_all_namespaces(_request_timeout=10).items
                slices = self.discovery.list_endpoint_slice_for_all_namespaces(_request_timeout=10).items
            except Exception as e:  # the API being down must not fail a capture
                self.error = f"Kubernetes API: {e.__class__.__name__}: {str(e).splitlines()[0][:200]}"
                log.warning("event=kube_refresh_failed error=%s", self.error)
                return
            # the API server sets every pod's uid; the client's types leave it optional
            self._pods = {p.metadata.uid: self._pod(p) for p in pods if p.metadata and p.metadata.uid}
            self._services = self._service_map(services, slices)
            self._at, self.error = time.monotonic(), None

    def _pod(self, p) -> PodIdentity:
        containers = {}
        for st in (p.status.container_statuses or []) if p.status else []:
            if st.container_id:
                containers[container_id(st.container_id)] = st.name
        kind, name = workload_of(p, self._owner_of) or (None, None)
        return PodIdentity(uid=p.metadata.uid, name=p.metadata.name, namespace=p.metadata.namespace,
                           node=p.spec.node_name if p.spec else None, workload_kind=kind, workload=name,
                           containers=containers, ip=p.status.pod_ip if p.status else None)

    def _owner_of(self, namespace: str, kind: str, name: str) -> Owner | None:
        """A ReplicaSet's or Job's own controller, read once and cached; None when it has none,
        or it cannot be read (not allowed, gone)."""
        key = (namespace, kind, name)
        if key not in self._owners:
            try:
                api = self.apps if kind == "ReplicaSet" else self.batch
                self._owners[key] = controller(getattr(api, _READ_OWNER[kind])(name, namespace, _request_timeout=10))
            except Exception:  # the direct controller is still a good answer
                self._owners[key] = None
        return self._owners[key]

    @staticmethod
    def _service_map(services, slices) -> dict[str, str]:
        """Cluster IPs (and ip:port) of Services, and the pod addresses behind them from their
        EndpointSlices (pods on every node, which is where a workload's peers usually are)."""
        out: dict[str, str] = {}
        for svc in services:
            name = f"{svc.metadata.name}.{svc.metadata.namespace}"
            spec = svc.spec
            if spec and spec.cluster_ip and spec.cluster_ip != "None":
                out[spec.cluster_ip] = name
                for port in spec.ports or []:
                    out[f"{spec.cluster_ip}:{port.port}"] = name
        for sl in slices:
            svc_name = (sl.metadata.labels or {}).get("kubernetes.io/service-name")
            if not svc_name:
                continue
            name = f"{svc_name}.{sl.metadata.namespace}"
            ports = [p.port for p in sl.ports or [] if p.port]
            for ep in sl.endpoints or []:
                for ip in ep.addresses or []:
                    out.setdefault(ip, name)
                    for port in ports:
                        out.setdefault(f"{ip}:{port}", name)
        return out

    def enrich(self, workload: dict) -> dict:
        """A workload dict from capture.identity with the pod's name, namespace, workload and
        container name added when the API knows its pod UID."""
        uid = workload.get("pod_uid")
        if not uid:
            return workload
        self.refresh()
        pod = self._pods.get(uid)
        if pod is None:
            return workload
        out = dict(workload, pod=pod.name, namespace=pod.namespace)
        if pod.workload:
            out |= {"workload_kind": pod.workload_kind, "workload": pod.workload}
        if pod.node:
            out["node"] = pod.node
        cid = workload.get("container_id")
        if cid and cid in pod.containers:
            out["container"] = pod.containers[cid]
        return out

    def service_of(self, peer: str) -> str | None:
        """``service.namespace`` for an ``ip:port`` peer (or its address alone), when known."""
        self.refresh()
        ip = peer.rsplit(":", 1)[0].strip("[]")
        return self._services.get(peer) or self._services.get(ip)


def api_client(url: str | None, token: str | None, kubeconfig: str | None, ca_file: str | None = None):
    """A ``kubernetes`` ApiClient: an explicit API URL (with a bearer token and CA file), a
    kubeconfig file, or the in-cluster service account, in that order."""
    from kubernetes import client, config

    if url:
        conf = client.Configuration(host=url.rstrip("/"))
        if token:
            conf.api_key = {"authorization": f"Bearer {token}"}
        if ca_file:
            conf.ssl_ca_cert = ca_file
        return client.ApiClient(conf)
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    config.load_incluster_config()
    return client.ApiClient()


def from_env(node_name: str | None) -> KubeIdentity | None:
    """The agent's Kubernetes API from its environment: ``LLMSLO_KUBE_API_URL`` (+
    ``LLMSLO_KUBE_TOKEN``, ``LLMSLO_KUBE_CA_FILE``), else ``KUBECONFIG``, else the in-cluster
    service account when running in a pod; None when there is none (plain hosts)."""
    import os

    url, kubeconfig = os.environ.get("LLMSLO_KUBE_API_URL"), os.environ.get("KUBECONFIG")
    if not (url or kubeconfig or os.environ.get("KUBERNETES_SERVICE_HOST")):
        return None
    return KubeIdentity.from_settings(url, os.environ.get("LLMSLO_KUBE_TOKEN"), kubeconfig, node_name,
                                      os.environ.get("LLMSLO_KUBE_CA_FILE"))
