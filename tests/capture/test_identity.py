"""Workload identity from real cgroups: the test creates kubepods-style cgroup trees (systemd
and cgroupfs drivers; containerd, CRI-O and docker naming), puts a real process in each, and
the agent maps process -> cgroup path -> cgroup id -> container id, pod UID and QoS class."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest

from capture import identity
from capture.agent import CaptureAgent
from capture.schemas import CaptureRequest, CaptureTarget
from lab.cgroups import WorkloadCgroup

pytestmark = pytest.mark.kernel

CID = "0123456789abcdef" * 4


def layouts(pod_uid: str) -> list[tuple[str, dict]]:
    u_ = pod_uid.replace("-", "_")
    return [
        (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u_}.slice/cri-containerd-{CID}.scope",
         {"runtime": "containerd", "qos": "burstable", "driver": "systemd"}),
        (f"kubepods.slice/kubepods-pod{u_}.slice/crio-{CID}.scope",
         {"runtime": "cri-o", "qos": "guaranteed", "driver": "systemd"}),
        (f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u_}.slice/docker-{CID}.scope",
         {"runtime": "docker", "qos": "besteffort", "driver": "systemd"}),
        (f"kubepods/burstable/pod{pod_uid}/{CID}", {"qos": "burstable", "driver": "cgroupfs"}),
        (f"kubepods/pod{pod_uid}/{CID}", {"qos": "guaranteed", "driver": "cgroupfs"}),
    ]


@pytest.fixture
def base_cgroup():
    cg = WorkloadCgroup("ident").create()
    yield cg
    cg.remove()  # the nested kubepods-style tree included


@pytest.mark.parametrize("index", range(5))
async def test_process_to_pod_identity(base_cgroup, index):
    pod_uid = str(uuid.uuid4())
    rel, expected = layouts(pod_uid)[index]
    leaf = base_cgroup.dir / rel
    leaf.mkdir(parents=True)
    procs = leaf / "cgroup.procs"
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         preexec_fn=lambda: procs.write_text(str(os.getpid())))
    try:
        path = identity.pid_cgroup_path(p.pid)
        assert path.endswith(rel)
        cgid = identity.cgroup_id(path)
        assert cgid == os.stat(leaf).st_ino
        assert identity.cgroup_path_of(cgid) == path
        ident = identity.parse_cgroup_path(path, cgid)
        assert ident.pod_uid == pod_uid and ident.container_id == CID
        for key, value in expected.items():
            assert getattr(ident, key) == value
        # The agent reports it with the capture, for the process it was asked about.
        agent = CaptureAgent(recorder=False)
        result = await agent.capture(CaptureRequest(target=CaptureTarget(pids=[p.pid]), probes=["tcp_connect"],
                                                    duration_s=1, baseline_s=0))
        assert result.processes[0]["pid"] == p.pid and result.processes[0]["comm"].startswith("python")
        assert result.workloads[0]["pod_uid"] == pod_uid and result.workloads[0]["container_id"] == CID
    finally:
        p.kill()
        p.wait()


def test_plain_host_paths_have_no_pod():
    ident = identity.parse_cgroup_path("/system.slice/llm-gateway.service", 42)
    assert ident.pod_uid is None and ident.container_id is None and ident.driver is None


async def test_pod_name_namespace_workload_and_service_from_the_kubernetes_api(base_cgroup):
    """A real process in a kubepods-style cgroup (containerd, systemd driver); a Kubernetes API
    stand-in over HTTP knows its pod (owned by a ReplicaSet of Deployment "chat") and a Service.
    The agent, through the official kubernetes client, names the pod, namespace, container and
    workload, names a peer by its Service, and lists only this node's pods."""
    from capture.kube import KubeIdentity
    from tests.standins import kube as K

    pod_uid = str(uuid.uuid4())
    rel = layouts(pod_uid)[0][0]
    leaf = base_cgroup.dir / rel
    leaf.mkdir(parents=True)
    standin = K.KubeStandin(
        pods=[K.pod(pod_uid, "chat-7d9f-x2k", "llm", "node-a", ip="10.1.0.5", labels={"app": "chat"},
                    owner=("ReplicaSet", "chat-7d9f"), containers={"api": f"containerd://{CID}"}),
              K.pod(str(uuid.uuid4()), "pg-0", "rag", "node-b", ip="10.1.0.9", labels={"app": "pg"},
                    owner=("StatefulSet", "pg"))],
        services=[K.service("retrieval", "rag", "10.96.0.20", 5432, selector={"app": "pg"})],
        owners={("llm", "ReplicaSet", "chat-7d9f"): K.replica_set("chat-7d9f", "llm", "chat")})
    url = await standin.start()
    procs = leaf / "cgroup.procs"
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         preexec_fn=lambda: procs.write_text(str(os.getpid())))
    try:
        kube = await asyncio.to_thread(KubeIdentity.from_settings, url, K.TOKEN, None, "node-a")
        agent = CaptureAgent(recorder=False, kube=kube)
        result = await agent.capture(CaptureRequest(target=CaptureTarget(pids=[p.pid]), probes=["tcp_connect"],
                                                    duration_s=1, baseline_s=0))
        w = result.workloads[0]
        assert (w["pod"], w["namespace"], w["container"]) == ("chat-7d9f-x2k", "llm", "api")
        assert (w["workload_kind"], w["workload"], w["node"]) == ("Deployment", "chat", "node-a")
        assert await asyncio.to_thread(kube.service_of, "10.96.0.20:5432") == "retrieval.rag"
        assert await asyncio.to_thread(kube.service_of, "10.1.0.9:5432") == "retrieval.rag"  # a pod behind it
        assert "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a" in standin.requests

        # A wrong token or an API that is down never fails the capture: it says why.
        standin.down = True
        await asyncio.to_thread(kube.refresh, True)
        assert kube.error and "503" in kube.error
        bad = await asyncio.to_thread(KubeIdentity.from_settings, url, "wrong", None, "node-a")
        standin.down = False
        agent = CaptureAgent(recorder=False, kube=bad)
        result = await agent.capture(CaptureRequest(target=CaptureTarget(pids=[p.pid]), probes=["tcp_connect"],
                                                    duration_s=1, baseline_s=0))
        assert "pod" not in result.workloads[0] and result.workloads[0]["pod_uid"] == pod_uid
        assert any("401" in e for e in result.errors), result.errors
    finally:
        p.kill()
        p.wait()
        await standin.stop()


def test_pod_uids_and_container_ids_resolve_to_their_kubepods_cgroups(base_cgroup):
    """What the responder sends on Kubernetes (pod UIDs, container ids from the API) becomes the
    cgroups on this node: a pod is its whole pod cgroup, unless containers of it are named; the
    systemd driver's and the cgroupfs driver's trees alike."""
    from capture.schemas import RequestError

    systemd_uid, cgroupfs_uid, absent = (str(uuid.uuid4()) for _ in range(3))
    c1, c2, c3 = ("1" * 64, "2" * 64, "3" * 64)
    pod1 = base_cgroup.dir / (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
                              f"{systemd_uid.replace('-', '_')}.slice")
    pod2 = base_cgroup.dir / f"kubepods/besteffort/pod{cgroupfs_uid}"
    for d in (pod1 / f"cri-containerd-{c1}.scope", pod1 / f"crio-{c2}.scope", pod2 / c3):
        d.mkdir(parents=True)
    ino = lambda p: os.stat(p).st_ino  # noqa: E731

    whole = identity.resolve(CaptureTarget(pods=[systemd_uid]))
    assert whole.cgroup_ids == {ino(pod1), ino(pod1 / f"cri-containerd-{c1}.scope"), ino(pod1 / f"crio-{c2}.scope")}
    one = identity.resolve(CaptureTarget(pods=[systemd_uid], containers=[c1]))
    assert one.cgroup_ids == {ino(pod1 / f"cri-containerd-{c1}.scope")}
    assert one.workloads[0]["container_id"] == c1 and one.workloads[0]["pod_uid"] == systemd_uid
    other = identity.resolve(CaptureTarget(pods=[cgroupfs_uid, absent]))
    assert other.cgroup_ids == {ino(pod2), ino(pod2 / c3)}
    assert other.notes == [f"pod {absent} has no cgroup on this node"]
    with pytest.raises(RequestError, match=f"pod {absent} has no cgroup on this node"):
        identity.resolve(CaptureTarget(pods=[absent]))
    with pytest.raises(RequestError, match="container 444444444444 has no cgroup"):
        identity.resolve(CaptureTarget(containers=["4" * 64]))
    # A unique prefix of 12 hex digits or more names the container; a shared one says so.
    short = identity.resolve(CaptureTarget(containers=[c3[:12]]))
    assert short.cgroup_ids == {ino(pod2 / c3)}
    twin = "3" * 12 + "f" * 52
    (pod2 / twin).mkdir()
    with pytest.raises(RequestError, match="is the prefix of 2 containers"):
        identity.resolve(CaptureTarget(containers=["3" * 12]))
