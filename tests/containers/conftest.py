"""The project's images on a real container runtime: podman (runc, cgroupfs manager) with the
project's own containers.conf. The images are built by ``scripts/images.sh`` (what ``make images``
runs), from scratch on a fresh machine and from its cache after that.

Every container a test starts is labelled with the test process's pid; the session removes those
whose process is gone (a killed run), and each fixture removes its own however the test ends.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.net import free_port
from lab import faults, process
from lab.servers import wait_for

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "images" / "containers.conf"
TAG = "0.1.0"
AGENT_IMAGE, RESPONDER_IMAGE = f"llmslo/agent:{TAG}", f"llmslo/responder:{TAG}"
OWNER_LABEL = "llmslo-test-owner"
# Building the base root and both images from nothing takes about 15 minutes here.
BUILD_TIMEOUT_S = 2400


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                       env=os.environ | {"CONTAINERS_CONF": str(CONF)}, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p


def run_container(image: str, *args: str, name: str, entrypoint: str | None = None,
                  options: tuple[str, ...] = ()) -> str:
    """Start a detached container on the host's network; its full id (as podman prints it)."""
    cmd = ["run", "-d", "--name", name, "--label", f"{OWNER_LABEL}={os.getpid()}", "--network=host", *options]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    out = podman(*cmd, image, *args).stdout.strip().splitlines()
    return out[-1]


def remove(*names: str) -> None:
    for n in names:
        for _ in range(3):  # a container still being killed can refuse the first removal
            if podman("rm", "-f", "-t", "0", n, check=False).returncode == 0:
                break
            time.sleep(1)


def sweep_stale_containers() -> list[str]:
    """Remove test containers whose owning test process is gone."""
    p = podman("ps", "-a", "--filter", f"label={OWNER_LABEL}", "--format", "json", check=False)
    gone = []
    for c in json.loads(p.stdout or "[]"):
        owner = (c.get("Labels") or {}).get(OWNER_LABEL, "")
        if process.owner_gone(owner):
            remove(c["Id"])
            gone.append(c["Id"])
    return gone


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    assert os.geteuid() == 0, "the container tests run podman as root and load eBPF programs"
    p = subprocess.run(["bash", str(REPO / "scripts" / "images.sh")], capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"make images failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    sweep_stale_containers()
    faults.sweep_stale_tables()
    for image in (AGENT_IMAGE, RESPONDER_IMAGE):
        assert podman("image", "exists", image, check=False).returncode == 0, f"{image} was not built"
    return {"agent": AGENT_IMAGE, "responder": RESPONDER_IMAGE}


def http_json(url: str, token: str | None = None, data: bytes | None = None,
              timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# The DaemonSet's pod, as podman runs it: privileged, the host's PID namespace, the same
# read-only host mounts, the token from the environment. The host's network, so that the test
# reaches its API on loopback (the DaemonSet keeps it on the pod network instead).
AGENT_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug", "/lib/modules", "/usr/src", "/sys/fs/cgroup")


@dataclass
class AgentContainer:
    id: str
    name: str
    url: str
    token: str

    def host_pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.id).stdout.strip())

    def logs(self) -> str:
        p = podman("logs", self.id, check=False)
        return p.stdout + p.stderr


def start_agent(image: str, *extra_args: str, mounts: tuple[str, ...] = AGENT_MOUNTS) -> AgentContainer:
    port, token = free_port(), secrets.token_urlsafe(16)
    name = f"llmslo-test-agent-{os.getpid()}-{port}"
    volumes = [opt for m in mounts for opt in ("-v", f"{m}:{m}:ro")]
    cid = run_container(image, "agent", "--host", "127.0.0.1", "--port", str(port), "--node-name", "podman-node",
                        *extra_args, name=name,
                        options=("--privileged", "--pid=host", "-e", f"LLMSLO_AGENT_TOKEN={token}", *volumes))
    return AgentContainer(id=cid, name=name, url=f"http://127.0.0.1:{port}", token=token)


@pytest.fixture(scope="module")
def agent_container(images) -> Iterator[AgentContainer]:
    """One agent container for the module's tests (compiling its recorder takes a minute or
    two), removed when they are done; the test that kills it runs last."""
    agent = start_agent(images["agent"])
    try:
        # The recorder compiles its probes in the background (a minute or two on 2 vCPUs).
        wait_for(what="the agent container's recorder has an interval",
                 check=lambda: (http_json(f"{agent.url}/healthz", agent.token)[1].get("recorder") or {}).get("intervals"),
                   timeout_s=300, interval_s=2)
        yield agent
    finally:
        remove(agent.name)
