"""On "Kubernetes", end to end: an alert naming a Deployment reaches a real ``llmslo serve`` that
finds the Deployment's pods through a Kubernetes API stand-in (real HTTP, the official client,
list + watch), finds the capture agent on each pod's node, and fans the capture out to two real
``llmslo agent`` processes on this machine, each told it is a different node.

The pods are real: kubepods-style cgroups this test creates (systemd driver; containerd naming on
node-a, CRI-O naming on node-b) with a process in each container that keeps connecting to a
loopback port of its own. Each agent turns pod UIDs and container ids from the API into cgroup
ids and filters in the kernel on them, so the peers the capture saw are exactly the named
containers' ports: not the sidecar's in the same pod, not another Deployment's pod on the same
node. A third pod sits on a node without an agent, and the report says so.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import uuid

import aiohttp
import pytest

from lab.cgroups import WorkloadCgroup
from lab.harness import AgentProcess, ResponderProcess, alert_payload
from tests.standins import kube as K

pytestmark = [pytest.mark.e2e, pytest.mark.kernel]

CONNECTOR = """
import socket, sys, time
port, end = int(sys.argv[1]), time.time() + 240
while time.time() < end:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        pass
    time.sleep(0.1)
"""


def cid() -> str:
    return secrets.token_hex(32)


class Container:
    """A container's cgroup under ``base`` and a process in it connecting to its own port."""

    def __init__(self, base: WorkloadCgroup, rel: str, port: int):
        self.dir = base.dir / rel
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self) -> Container:
        self.dir.mkdir(parents=True)
        procs = self.dir / "cgroup.procs"
        self.proc = subprocess.Popen([sys.executable, "-c", CONNECTOR, str(self.port)],
                                     preexec_fn=lambda: procs.write_text(str(os.getpid())))
        return self

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.dir).st_ino


async def listeners(n: int) -> tuple[list[asyncio.base_events.Server], list[int]]:
    async def accept(reader, writer):
        writer.close()

    servers = [await asyncio.start_server(accept, "127.0.0.1", 0) for _ in range(n)]
    return servers, [s.sockets[0].getsockname()[1] for s in servers]


async def test_an_alert_naming_a_deployment_is_captured_on_both_nodes_of_its_pods(tmp_path):
    servers, ports = await listeners(4)
    base = WorkloadCgroup("kube").create()
    ua, ub, un, uc = (str(uuid.uuid4()) for _ in range(4))
    ca, cs, cb, cn = cid(), cid(), cid(), cid()
    burst = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ua.replace('-', '_')}.slice"
    containers = {
        "a-api": Container(base, f"{burst}/cri-containerd-{ca}.scope", ports[0]),
        "a-sidecar": Container(base, f"{burst}/cri-containerd-{cs}.scope", ports[1]),
        "b-api": Container(base, f"kubepods.slice/kubepods-pod{ub.replace('-', '_')}.slice/crio-{cb}.scope", ports[2]),
        "other": Container(base, f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
                                 f"{un.replace('-', '_')}.slice/cri-containerd-{cn}.scope", ports[3]),
    }
    token = secrets.token_urlsafe(16)
    agents = [AgentProcess(node, token, log_path=tmp_path / f"agent-{node}.log") for node in ("node-a", "node-b")]
    chat = {"app": "chat"}
    standin = K.KubeStandin(
        pods=[K.pod(ua, "chat-7d9f-a", "llm", "node-a", ip="10.1.0.5", labels=chat, owner=("ReplicaSet", "chat-7d9f"),
                    containers={"api": f"containerd://{ca}", "sidecar": f"containerd://{cs}"}),
              K.pod(ub, "chat-7d9f-b", "llm", "node-b", ip="10.1.1.5", labels=chat, owner=("ReplicaSet", "chat-7d9f"),
                    containers={"api": f"cri-o://{cb}"}),
              K.pod(uc, "chat-7d9f-c", "llm", "node-c", ip="10.1.2.5", labels=chat, owner=("ReplicaSet", "chat-7d9f"),
                    containers={"api": f"containerd://{cid()}"}),
              K.pod(un, "other-5f-x", "llm", "node-a", ip="10.1.0.6", labels={"app": "other"},
                    owner=("ReplicaSet", "other-5f"), containers={"app": f"containerd://{cn}"}),
              *[K.pod(str(uuid.uuid4()), f"llmslo-agent-{a.node[-1]}", "llmslo", a.node, ip="127.0.0.1",
                      labels={"app.kubernetes.io/name": "llmslo-agent"}, owner=("DaemonSet", "llmslo-agent"),
                      containers={"agent": f"containerd://{cid()}"}, ports={"api": a.port}) for a in agents]],
        services=[],
        owners={("llm", "ReplicaSet", "chat-7d9f"): K.replica_set("chat-7d9f", "llm", "chat"),
                ("llm", "ReplicaSet", "other-5f"): K.replica_set("other-5f", "llm", "other")})
    kube_url = await standin.start()
    kube_env = {"LLMSLO_KUBE_API_URL": kube_url, "LLMSLO_KUBE_TOKEN": K.TOKEN}
    responder = ResponderProcess(tmp_path / "data", token="hook-" + token, log_path=tmp_path / "responder.log",
                                 extra_env=kube_env | {"LLMSLO_AGENT_DISCOVERY": "kubernetes",
                                                       "LLMSLO_AGENT_TOKEN": token})
    try:
        for c in containers.values():
            c.start()
        for a in agents:
            a.env.update(kube_env)
            a.start()
        responder.start()
        await asyncio.gather(responder.wait_ready(), *(a.wait_ready() for a in agents))

        labels = {"alertname": "LLMLatencyBurn", "severity": "page", "namespace": "llm", "deployment": "chat",
                  "container": "api"}
        status, body = await responder.post_alert(alert_payload("firing", labels, time.time()))
        assert status == 200, body
        inc = await responder.wait_verdict(body["incident_id"], timeout=240)
        cap = inc["capture"]
        assert cap is not None, inc.get("error")

        # The Deployment's pods, where they run, and the node that has no agent.
        pods = {p["name"]: p for p in cap["pods"]}
        assert set(pods) == {"chat-7d9f-a", "chat-7d9f-b", "chat-7d9f-c"}
        assert (pods["chat-7d9f-a"]["node"], pods["chat-7d9f-a"]["captured"]) == ("node-a", True)
        assert (pods["chat-7d9f-b"]["node"], pods["chat-7d9f-b"]["captured"]) == ("node-b", True)
        assert pods["chat-7d9f-c"]["captured"] is False
        assert pods["chat-7d9f-a"]["workload_kind"] == "Deployment" and pods["chat-7d9f-a"]["workload"] == "chat"
        nodes = {n["node"]: n for n in cap["nodes"]}
        assert nodes["node-a"]["status"] == nodes["node-b"]["status"] == "ok"
        assert nodes["node-a"]["agent"] == "llmslo-agent-a" and nodes["node-b"]["agent"] == "llmslo-agent-b"
        assert nodes["node-c"]["status"] == "no agent" and "node-c" in nodes["node-c"]["error"]

        # Each agent mapped the API's ids to exactly the named containers' cgroups ...
        assert sorted(cap["cgroup_ids"]) == sorted([containers["a-api"].cgroup_id, containers["b-api"].cgroup_id])
        by_node = {w["node"]: w for w in cap["workloads"]}
        assert by_node["node-a"]["container_id"] == ca and by_node["node-a"]["runtime"] == "containerd"
        assert by_node["node-b"]["container_id"] == cb and by_node["node-b"]["runtime"] == "cri-o"
        # ... which the agent, with its own view of the API, names.
        assert (by_node["node-a"]["pod"], by_node["node-a"]["container"]) == ("chat-7d9f-a", "api")
        assert (by_node["node-b"]["pod"], by_node["node-b"]["namespace"]) == ("chat-7d9f-b", "llm")

        # ... and the kernel counted only their connections: both nodes' peers, and not the
        # sidecar's nor the other Deployment's, which connected just as often on node-a.
        connect = cap["incident"]["tcp_connect"]
        peers = {p["peer"].rsplit(":", 1)[1] for p in connect["top"].get("peers", [])}
        assert {str(ports[0]), str(ports[2])} <= peers, peers
        assert not peers & {str(ports[1]), str(ports[3])}, peers
        assert connect["counters"]["established"] >= 20  # two pods at ~10/s over a 10 s capture
        # Per pod, from the kernel's per-cgroup counts: both pods connected, and they add up.
        per_pod = {p["name"]: p["counters"].get("tcp_connect.established", 0) for p in cap["pods"]}
        assert per_pod["chat-7d9f-a"] >= 10 and per_pod["chat-7d9f-b"] >= 10 and per_pod["chat-7d9f-c"] == 0
        assert per_pod["chat-7d9f-a"] + per_pod["chat-7d9f-b"] == connect["counters"]["established"]

        # The thread counts the pods and names the node without an agent; the incident page lists
        # every pod with its workload and node.
        text = await thread_text(responder, inc)
        for needle in ("Kernel capture of 3 pod(s) on 2 of 3 node(s)", "1 pod(s) not captured",
                       "Node node-c: no agent: no capture agent pod on node node-c"):
            assert needle in text, (needle, text)
        async with aiohttp.ClientSession(headers=responder.headers()) as http:
            async with http.get(f"{responder.url}/incidents/{inc['id']}") as r:
                page = await r.text()
        for pod, node in (("a", "node-a"), ("b", "node-b"), ("c", "node-c")):
            assert f"<code>llm/chat-7d9f-{pod}</code> (Deployment chat) on <code>{node}</code>" in page, pod
        assert "chat-7d9f-c</code> (Deployment chat) on <code>node-c</code> — not captured" in page
    finally:
        responder.stop()
        for a in agents:
            a.stop()
        base.remove()
        await standin.stop()
        for s in servers:
            s.close()


async def thread_text(responder: ResponderProcess, inc: dict, timeout: float = 30.0) -> str:
    """The attribution as the console sink posted it (its plain-text rendering)."""
    path = responder.data_dir / "reports.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ops = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        texts = [op["message"]["text"] for op in ops if "Kernel capture" in op.get("message", {}).get("text", "")]
        if texts:
            return texts[-1]
        await asyncio.sleep(0.5)
    raise AssertionError(f"no attribution posted for {inc['id']}")
