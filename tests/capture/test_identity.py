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

pytestmark = pytest.mark.bpf

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
