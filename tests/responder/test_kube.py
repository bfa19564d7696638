"""The responder's Kubernetes side against a stand-in API server over real HTTP, read through the
official ``kubernetes`` client: alert labels -> pods (owner references, Service selectors,
containers), the agent pod on each node, and the watch-based cache (one list, then watches; a
lost watch history lists again)."""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import pytest

from capture.kube import api_client
from capture.schemas import (
    CaptureCost,
    CaptureRequest,
    CaptureResult,
    CaptureTarget,
    ProbeCost,
    ProbeResult,
    RequestError,
)
from responder.kube.cluster import KubeCluster, KubeUnavailable, ScopeError, names_workload, parse_selector
from responder.playbooks import ScopeSpec
from tests.standins import kube as K

SPEC = ScopeSpec(namespace_label="namespace", pod_label="pod", service_label="service",
                 deployment_label="deployment", statefulset_label="statefulset", daemonset_label="daemonset",
                 job_label="job_name", container_label="container")
AGENT_LABELS = {"app.kubernetes.io/name": "llmslo-agent"}


def cid(n: int) -> str:
    return f"{n:064x}"


def world() -> K.KubeStandin:
    u = lambda: str(uuid.uuid4())  # noqa: E731
    pods = [
        K.pod(u(), "chat-6b7c-a", "llm", "node-a", ip="10.1.0.5", labels={"app": "chat"},
              owner=("ReplicaSet", "chat-6b7c"), containers={"api": f"containerd://{cid(1)}",
                                                             "sidecar": f"containerd://{cid(2)}"}),
        K.pod(u(), "chat-6b7c-b", "llm", "node-b", ip="10.1.0.6", labels={"app": "chat"},
              owner=("ReplicaSet", "chat-6b7c"), containers={"api": f"cri-o://{cid(3)}"}),
        K.pod(u(), "chat-6b7c-c", "llm", "", ip="", labels={"app": "chat"}, owner=("ReplicaSet", "chat-6b7c"),
              phase="Pending"),
        K.pod(u(), "chat-6b7c-a", "other", "node-a", ip="10.1.0.7", labels={"app": "chat"},
              owner=("ReplicaSet", "chat-6b7c"), containers={"api": f"containerd://{cid(4)}"}),
        K.pod(u(), "vec-0", "llm", "node-a", ip="10.1.0.8", labels={"app": "vec"}, owner=("StatefulSet", "vec"),
              containers={"db": f"containerd://{cid(5)}"}),
        K.pod(u(), "logs-x1", "llm", "node-b", ip="10.1.0.9", labels={"app": "logs"}, owner=("DaemonSet", "logs"),
              containers={"fwd": f"containerd://{cid(6)}"}),
        K.pod(u(), "embed-28f-q", "llm", "node-b", ip="10.1.0.10", owner=("Job", "embed-28f"),
              containers={"job": f"containerd://{cid(7)}"}),
        K.pod(u(), "llmslo-agent-a", "llmslo", "node-a", ip="127.0.0.1", labels=AGENT_LABELS,
              owner=("DaemonSet", "llmslo-agent"), containers={"agent": f"containerd://{cid(8)}"},
              ports={"api": 18081}),
        K.pod(u(), "llmslo-agent-b", "llmslo", "node-b", ip="127.0.0.1", labels=AGENT_LABELS,
              owner=("DaemonSet", "llmslo-agent"), containers={"agent": f"containerd://{cid(9)}"},
              ports={"api": 18082}),
        K.pod(u(), "llmslo-agent-c", "llmslo", "node-c", ip="127.0.0.1", labels=AGENT_LABELS,
              owner=("DaemonSet", "llmslo-agent"), containers={"agent": f"containerd://{cid(10)}"},
              ports={"api": 18083}, ready=False),
        K.pod(u(), "impostor", "default", "node-c", ip="127.0.0.9", labels=AGENT_LABELS, ports={"api": 1}),
    ]
    rs = K.replica_set("chat-6b7c", "llm", "chat")
    rs_other = K.replica_set("chat-6b7c", "other", "chat")
    return K.KubeStandin(pods=pods, services=[K.service("chat", "llm", "10.96.0.10", 80, selector={"app": "chat"}),
                                              K.service("external", "llm", "10.96.0.11", 443)],
                         owners={("llm", "ReplicaSet", "chat-6b7c"): rs, ("other", "ReplicaSet", "chat-6b7c"): rs_other,
                                 ("llm", "Job", "embed-28f"): K.job("embed-28f", "llm", cron_job="embed")})


@pytest.fixture
async def kube():
    standin = world()
    url = await standin.start()
    cluster = KubeCluster(api_client(url, K.TOKEN, None), agent_namespace="llmslo",
                          agent_selector=parse_selector("app.kubernetes.io/name=llmslo-agent"), watch_timeout_s=5)
    yield standin, cluster
    await standin.stop()
    await asyncio.to_thread(cluster.close)


def names(scope) -> list[str]:
    return [f"{p.namespace}/{p.name}@{p.node}" for p in scope.pods]


async def resolve(cluster, **labels):
    return await asyncio.to_thread(cluster.resolve, SPEC, labels)


@pytest.mark.slow
async def test_a_deployment_is_its_replicasets_pods_in_its_namespace(kube):
    standin, cluster = kube
    scope = await resolve(cluster, namespace="llm", deployment="chat")
    assert names(scope) == ["llm/chat-6b7c-a@node-a", "llm/chat-6b7c-b@node-b"]
    assert scope.pods[0].workload_kind == "Deployment" and scope.pods[0].workload == "chat"
    assert scope.target.pods == [p.uid for p in scope.pods] and scope.target.containers == []
    assert scope.notes == ["pod llm/chat-6b7c-c is Pending, not scheduled: not captured"]
    assert "2 pod(s) on 2 node(s)" in scope.description


async def test_a_job_a_cronjob_started_is_named_as_the_cronjob_and_found_by_either_name(kube):
    _, cluster = kube
    scope = await resolve(cluster, namespace="llm", job_name="embed-28f")
    assert names(scope) == ["llm/embed-28f-q@node-b"]
    assert (scope.pods[0].workload_kind, scope.pods[0].workload) == ("CronJob", "embed")


@pytest.mark.parametrize("labels, expected", [
    ({"statefulset": "vec"}, ["llm/vec-0@node-a"]),
    ({"daemonset": "logs"}, ["llm/logs-x1@node-b"]),
    ({"job_name": "embed-28f"}, ["llm/embed-28f-q@node-b"]),
    ({"pod": "chat-6b7c-b"}, ["llm/chat-6b7c-b@node-b"]),
    ({"service": "chat"}, ["llm/chat-6b7c-a@node-a", "llm/chat-6b7c-b@node-b"]),
    # The most specific label wins: a pod over its deployment and service.
    ({"pod": "chat-6b7c-a", "deployment": "chat", "service": "chat"}, ["llm/chat-6b7c-a@node-a"]),
])
@pytest.mark.slow
async def test_workload_kinds_and_services(kube, labels, expected):
    _, cluster = kube
    assert names(await resolve(cluster, namespace="llm", **labels)) == expected


async def test_a_named_container_narrows_the_target_to_its_ids(kube):
    _, cluster = kube
    scope = await resolve(cluster, namespace="llm", deployment="chat", container="api")
    assert scope.target.containers == [cid(1), cid(3)]  # runtime prefixes gone, the sidecar not named
    with pytest.raises(ScopeError, match="no running container 'nope'"):
        await resolve(cluster, namespace="llm", deployment="chat", container="nope")


@pytest.mark.parametrize("labels, message", [
    ({"deployment": "chat"}, "names deployment 'chat' but not its namespace"),
    ({"namespace": "llm", "deployment": "ghost"}, "deployment llm/ghost: no pods"),
    ({"namespace": "llm", "service": "external"}, "the Service has no selector"),
    ({"namespace": "llm", "service": "ghost"}, "no such Service"),
    ({"namespace": "nowhere", "pod": "chat-6b7c-a"}, "pod nowhere/chat-6b7c-a: no pods"),
])
async def test_labels_that_name_nothing_capturable_say_why(kube, labels, message):
    _, cluster = kube
    with pytest.raises(ScopeError, match=message):
        await resolve(cluster, **labels)


def test_which_labels_name_a_workload():
    assert names_workload(SPEC, {"namespace": "llm", "service": "chat"})
    assert not names_workload(SPEC, {"namespace": "llm", "job": "scrape-job"})  # Prometheus's job label
    assert not names_workload(ScopeSpec(), {"namespace": "llm", "pod": "x"})  # the playbook reads none


async def test_agents_are_the_daemonset_pods_by_node_at_their_api_port(kube):
    _, cluster = kube
    await resolve(cluster, namespace="llm", deployment="chat")
    agents = await asyncio.to_thread(cluster.agents)
    assert agents["node-a"].url == "http://127.0.0.1:18081" and agents["node-a"].name == "llmslo-agent-a"
    assert agents["node-b"].url == "http://127.0.0.1:18082"
    assert agents["node-c"].url is None and "not ready" in agents["node-c"].why_not
    assert "127.0.0.9" not in {a.url for a in agents.values()}  # the right labels in another namespace


async def test_an_alert_storm_reads_the_cache_and_the_watch_keeps_it_current(kube):
    standin, cluster = kube
    for _ in range(100):
        await resolve(cluster, namespace="llm", deployment="chat")
    assert standin.count("/api/v1/pods", watch=False) == 1
    assert standin.count("/apis/apps/v1/replicasets", watch=False) == 1
    # A new pod of the deployment reaches the cache through the watch, without a new list.
    new_uid = str(uuid.uuid4())
    standin.upsert("pods", K.pod(new_uid, "chat-6b7c-d", "llm", "node-a", ip="10.1.0.11", labels={"app": "chat"},
                                 owner=("ReplicaSet", "chat-6b7c"), containers={"api": f"containerd://{cid(11)}"}))
    await until(lambda: new_uid in cluster.resolve(SPEC, {"namespace": "llm", "deployment": "chat"}).target.pods)
    standin.delete("pods", "llm", "chat-6b7c-b")
    await until(lambda: "llm/chat-6b7c-b@node-b" not in names(cluster.resolve(
        SPEC, {"namespace": "llm", "deployment": "chat"})))
    assert standin.count("/api/v1/pods", watch=False) == 1 and standin.count("/api/v1/pods", watch=True) >= 1
    assert cluster.stats()["pods"]["lists"] == 1


async def test_a_lost_watch_history_lists_again(kube):
    standin, cluster = kube
    await resolve(cluster, namespace="llm", deployment="chat")
    # A change the open watch never sends (the history is compacted around it), then the watch
    # breaks: resuming from the informer's version gets 410 Gone, so it lists again.
    standin.compact()
    standin.upsert("pods", K.pod(str(uuid.uuid4()), "vec-1", "llm", "node-b", ip="10.1.0.12", labels={"app": "vec"},
                                 owner=("StatefulSet", "vec"), containers={"db": f"containerd://{cid(12)}"}))
    standin.compact()
    standin.drop_watches()
    await until(lambda: len(cluster.resolve(SPEC, {"namespace": "llm", "statefulset": "vec"}).pods) == 2)
    assert cluster.stats()["pods"]["lists"] == 2


@pytest.mark.slow
async def test_an_unreachable_or_refusing_api_is_a_clear_error():
    standin = world()
    url = await standin.start()
    bad = KubeCluster(api_client(url, "wrong-token", None), agent_namespace="llmslo",
                      agent_selector=AGENT_LABELS)
    try:
        with pytest.raises(KubeUnavailable, match="could not list pods: 401"):
            await asyncio.to_thread(lambda: (bad.pods.items(timeout=3)))
    finally:
        await standin.stop()
        await asyncio.to_thread(bad.close)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await asyncio.to_thread(predicate):
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


# --- fan-out ---------------------------------------------------------------------------------
class AgentStandin:
    """An agent's HTTP API (``POST /v1/captures``, bearer token) answering with a fixed capture
    of its node, or with an error status."""

    def __init__(self, node: str, established: int, status: int = 200):
        self.node, self.established, self.status = node, established, status
        self.requests: list[dict] = []

    async def capture(self, request):
        from aiohttp import web

        if request.headers.get("Authorization") != "Bearer agent-token":
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        self.requests.append(body)
        if self.status != 200:
            return web.json_response({"error": f"{self.node} is on fire"}, status=self.status)
        t = CaptureTarget.from_dict(body["target"])
        pr = ProbeResult("tcp_connect", 10.0, counters={"established": self.established},
                         top={"peers": [{"peer": "10.96.0.1:443", "count": self.established}]},
                         cost=ProbeCost(bpf_run_time_ns=1_000_000, bpf_run_count=100),
                         by_cgroup={"1": {"established": self.established}})
        result = CaptureResult(id=f"cap-{self.node}", node=self.node, target=t, started_at=1000.0, ended_at=1010.0,
                               incident={"tcp_connect": pr}, cgroup_ids=[len(self.node)],
                               workloads=[{"id": 1, "path": f"/kubepods.slice/{self.node}", "pod_uid": t.pods[0]}],
                               cost=CaptureCost(bpf_run_time_ns=1_000_000, events=self.established, agent_cpu_s=0.5))
        return web.json_response(result.to_dict())

    async def start(self) -> int:
        from aiohttp import web
        from aiohttp.test_utils import TestServer

        app = web.Application()
        app.router.add_post("/v1/captures", self.capture)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self.server.port


async def test_a_capture_fans_out_to_each_nodes_agent_and_combines_what_they_found():
    from capture.client import AgentError
    from responder.kube.cluster import KubeAgents

    agents = {"node-a": AgentStandin("node-a", 30), "node-b": AgentStandin("node-b", 12),
              "node-d": AgentStandin("node-d", 0, status=503)}
    ports = {n: await a.start() for n, a in agents.items()}
    uids = {n: str(uuid.uuid4()) for n in ("node-a", "node-b", "node-c", "node-d")}
    pods = [K.pod(uids[n], f"chat-{n[-1]}", "llm", n, ip="10.1.0.1", labels={"app": "chat"},
                  owner=("ReplicaSet", "chat-6b7c"), containers={"api": f"containerd://{cid(i)}"})
            for i, n in enumerate(uids)]
    pods += [K.pod(str(uuid.uuid4()), f"agent-{n}", "llmslo", n, ip="127.0.0.1", labels=AGENT_LABELS,
                   ports={"api": port}) for n, port in ports.items()]
    standin = K.KubeStandin(pods=pods, services=[],
                            owners={("llm", "ReplicaSet", "chat-6b7c"): K.replica_set("chat-6b7c", "llm", "chat")})
    url = await standin.start()
    cluster = KubeCluster(api_client(url, K.TOKEN, None), agent_namespace="llmslo", agent_selector=AGENT_LABELS)
    fanout = KubeAgents(cluster, "agent-token")
    try:
        scope = await resolve(cluster, namespace="llm", deployment="chat", container="api")
        req = CaptureRequest(target=scope.target, probes=["tcp_connect"], duration_s=10, baseline_s=0,
                             incident_id="inc-1")
        result = await fanout.capture(req)
        nodes = {n["node"]: n for n in result.nodes}
        assert {n: o["status"] for n, o in nodes.items()} == {
            "node-a": "ok", "node-b": "ok", "node-c": "no agent", "node-d": "failed"}
        assert "node-d is on fire" in nodes["node-d"]["error"] and "503" in nodes["node-d"]["error"]
        assert nodes["node-c"]["error"] == "no capture agent pod on node node-c"
        # Each agent was asked about its own node's pod and container only.
        for n in ("node-a", "node-b", "node-d"):
            (body,) = agents[n].requests
            assert body["target"] == {"pids": [], "cgroups": [], "ports": [], "pods": [uids[n]],
                                      "containers": [scope.target.containers[list(uids).index(n)]]}
            assert body["incident_id"] == "inc-1"
        # The same window from two nodes: counts add up, the window stays 10 s, costs add up.
        tc = result.incident["tcp_connect"]
        assert tc.counters["established"] == 42 and tc.window_s == 10.0 and tc.rate("established") == 4.2
        assert tc.top["peers"] == [{"peer": "10.96.0.1:443", "count": 42}]
        assert tc.cost.bpf_run_time_ns == 2_000_000 and result.cost.agent_cpu_s == 1.0
        assert {w["node"] for w in result.workloads} == {"node-a", "node-b"}
        assert {p["name"]: p["captured"] for p in result.pods} == {
            "chat-a": True, "chat-b": True, "chat-c": False, "chat-d": False}
        # Per pod: the counters of its cgroups, from each agent's per-cgroup counts.
        assert {p["name"]: p["counters"] for p in result.pods} == {
            "chat-a": {"tcp_connect.established": 30}, "chat-b": {"tcp_connect.established": 12},
            "chat-c": {}, "chat-d": {}}
        # It survives the JSON round trip the store makes.
        assert CaptureResult.from_dict(result.to_dict()).pods == result.pods

        # No node able to capture: an error naming each node and why.
        only_broken = dataclasses.replace(req, target=CaptureTarget(pods=[uids["node-c"], uids["node-d"]]))
        with pytest.raises(AgentError, match="node-c: no capture agent pod on node node-c; node-d: .*503"):
            await fanout.capture(only_broken)
        # Host-style targets mean nothing across nodes.
        with pytest.raises(RequestError, match="on Kubernetes a capture names pods"):
            await fanout.capture(dataclasses.replace(req, target=CaptureTarget(pids=[1])))
        with pytest.raises(RequestError, match="not known to the Kubernetes API"):
            await fanout.capture(dataclasses.replace(req, target=CaptureTarget(pods=[str(uuid.uuid4())])))
    finally:
        await fanout.close()
        await standin.stop()
        for a in agents.values():
            await a.server.close()


async def test_the_scope_stage_on_kubernetes_and_off_it(kube):
    from responder.pipeline.scope import scope_from_labels

    _, cluster = kube
    scope = await asyncio.to_thread(scope_from_labels, SPEC, {"namespace": "llm", "deployment": "chat"}, cluster)
    assert len(scope.target.pods) == 2 and scope.notes
    with pytest.raises(ScopeError, match="no workload label on the alert: expected a namespace and one of pod, "
                                         "deployment, statefulset, daemonset, job_name, service"):
        await asyncio.to_thread(scope_from_labels, SPEC, {"namespace": "llm", "pid": "1"}, cluster)
    # Without Kubernetes, a workload label alone cannot be captured, and the error says why.
    with pytest.raises(ScopeError, match=r"names deployment=chat, which only Kubernetes resolves to pods, .* "
                                         r"add a pid, cgroup, port or container id label \(pid, cgroup, port, container_id\)"):
        scope_from_labels(SPEC, {"namespace": "llm", "deployment": "chat"})
    host = scope_from_labels(SPEC, {"namespace": "llm", "deployment": "chat", "pid": "42"})
    assert host.target == CaptureTarget(pids=[42]) and host.description == "pid:42" and host.pods == []


def test_a_plain_host_scope_names_a_runtime_container_by_its_id_label():
    from responder.pipeline.scope import scope_from_labels

    cid = "0f1e2d3c4b5a6978" * 4
    for value in (cid, f"podman://{cid}", cid[:12]):
        scope = scope_from_labels(SPEC, {"container_id": value})
        assert scope.target == CaptureTarget(containers=[value.split("://")[-1]])
    with pytest.raises(ScopeError, match="label container_id='libpod-x' is not a container id"):
        scope_from_labels(SPEC, {"container_id": "libpod-x"})
