"""An alert storm against the Kubernetes API: what scope resolution costs the API server with the
responder's watch-based cache, against reading the API for every alert.

    .venv/bin/python -m bench.kube [--alerts 300] [--deployments 150] [--pods-per 6] [--nodes 40]
                                   [--out bench/results/kube.json]

In one run, on one machine: the API stand-in (real HTTP on loopback, served from a thread) holds
``deployments x pods-per`` pods on ``nodes`` nodes, each Deployment with its ReplicaSet, and one
agent pod per node. ``--alerts`` alerts, each naming one Deployment, are resolved to pods and
their nodes' agents:

1. baseline, direct reads: every resolution lists pods and ReplicaSets from the API (what a
   responder without a cache does), through the same official client and the same resolver;
2. the cache: ``KubeCluster``'s informers (one list per resource, then a watch).

Reported: API requests and bytes served, and resolution latency (p50, p99), with the ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid

from bench import write_results
from capture.kube import api_client
from responder.kube.cluster import Informer, KubeCluster
from responder.playbooks import ScopeSpec
from tests.standins import kube as K

SPEC = ScopeSpec(namespace_label="namespace", deployment_label="deployment")
AGENTS = {"app.kubernetes.io/name": "llmslo-agent"}


def world(deployments: int, pods_per: int, nodes: int) -> K.KubeStandin:
    pods, owners = [], {}
    for d in range(deployments):
        ns, name = f"team-{d % 10}", f"svc-{d}"
        rs = f"{name}-6b7c9"
        owners[(ns, "ReplicaSet", rs)] = K.replica_set(rs, ns, name)
        for i in range(pods_per):
            cid = uuid.uuid4().hex * 2
            pods.append(K.pod(str(uuid.uuid4()), f"{rs}-{i}", ns, f"node-{(d * pods_per + i) % nodes}",
                              ip=f"10.{d // 250}.{d % 250}.{i + 1}", labels={"app": name}, owner=("ReplicaSet", rs),
                              containers={"app": f"containerd://{cid}"}))
    for n in range(nodes):
        pods.append(K.pod(str(uuid.uuid4()), f"llmslo-agent-{n}", "llmslo", f"node-{n}", ip=f"10.200.0.{n + 1}",
                          labels=AGENTS, ports={"api": 8081}))
    return K.KubeStandin(pods=pods, services=[], owners=owners)


class Served:
    """The stand-in on a loop of its own thread, counting the bytes its lists send."""

    def __init__(self, standin: K.KubeStandin):
        self.standin = standin
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.url = asyncio.run_coroutine_threadsafe(standin.start(), self.loop).result()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.standin.stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


class DirectReads(Informer):
    """The baseline's ``items()``: a fresh list from the API on every call (an Informer that
    never lists ahead nor watches)."""

    def items(self, timeout: float = 10.0):
        return self.list_fn(_request_timeout=timeout).items

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def storm(cluster: KubeCluster, alerts: int, deployments: int) -> list[float]:
    latencies = []
    for a in range(alerts):
        d = (a * 7) % deployments
        t0 = time.perf_counter()
        scope = cluster.resolve(SPEC, {"namespace": f"team-{d % 10}", "deployment": f"svc-{d}"})
        agents = cluster.agents()
        assert all(p.node in agents for p in scope.pods)
        latencies.append(time.perf_counter() - t0)
    return latencies


def measure(served: Served, direct: bool, alerts: int, deployments: int) -> dict:
    from kubernetes import client

    api = api_client(served.url, K.TOKEN, None)
    cluster = KubeCluster(api, agent_namespace="llmslo", agent_selector=AGENTS)
    if direct:
        cluster.pods = DirectReads("pods", client.CoreV1Api(api).list_pod_for_all_namespaces)
        cluster.replicasets = DirectReads("replicasets", client.AppsV1Api(api).list_replica_set_for_all_namespaces)
        cluster.jobs = DirectReads("jobs", client.BatchV1Api(api).list_job_for_all_namespaces)
    before = len(served.standin.requests)
    lat = storm(cluster, alerts, deployments)
    requests = served.standin.requests[before:]
    cluster.close()
    lists = [r for r in requests if "watch=true" not in r]
    return {"mode": "direct reads" if direct else "watch cache", "alerts": alerts,
            "api_lists": len(lists), "api_watches": len(requests) - len(lists),
            "resolve_p50_ms": round(statistics.median(lat) * 1000, 2),
            "resolve_p99_ms": round(sorted(lat)[int(0.99 * (len(lat) - 1))] * 1000, 2),
            "wall_s": round(sum(lat), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=300)
    ap.add_argument("--deployments", type=int, default=150)
    ap.add_argument("--pods-per", type=int, default=6)
    ap.add_argument("--nodes", type=int, default=40)
    ap.add_argument("--out", default="bench/results/kube.json")
    args = ap.parse_args()
    served = Served(world(args.deployments, args.pods_per, args.nodes))
    try:
        base = measure(served, True, args.alerts, args.deployments)
        cached = measure(served, False, args.alerts, args.deployments)
    finally:
        served.stop()
    pods = args.deployments * args.pods_per + args.nodes
    print(f"{pods} pods on {args.nodes} nodes, {args.alerts} alerts each naming a Deployment")
    for r in (base, cached):
        print(f"  {r['mode']:13} API lists {r['api_lists']:5}  watches {r['api_watches']:3}  "
              f"resolve p50 {r['resolve_p50_ms']:8.2f} ms  p99 {r['resolve_p99_ms']:8.2f} ms  total {r['wall_s']:.1f} s")
    ratio_lists = base["api_lists"] / max(1, cached["api_lists"])
    ratio_p50 = base["resolve_p50_ms"] / max(1e-6, cached["resolve_p50_ms"])
    print(f"  ratio: {ratio_lists:.0f}x fewer API lists, p50 resolution {ratio_p50:.1f}x faster with the cache")
    write_results({"pods": pods, "nodes": args.nodes, "baseline": base, "cached": cached,
                   "ratio_api_lists": round(ratio_lists, 1), "ratio_resolve_p50": round(ratio_p50, 1)}, args.out)


if __name__ == "__main__":
    main()
