"""The agent's image on a real runtime, capturing workloads a real runtime started.

podman runs the agent as the DaemonSet does and two HTTP server/client pairs as ordinary
containers (runc, cgroupfs manager: each in ``/libpod_parent/libpod-<id>``). Loss is injected on
one pair's port with nftables; the host asks the agent container for captures by container id
(as podman prints it, with a runtime prefix, shortened) and by cgroup, and the counts must follow
the fault per container. Then the agent container is killed with SIGKILL and nothing of it may
stay loaded in the kernel.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capture import identity
from common.net import free_port
from lab import faults
from lab.harness import alert_payload
from lab.servers import wait_for
from tests.capture.conftest import held_prog_ids, loaded_prog_ids
from tests.containers.conftest import (
    AGENT_MOUNTS,
    OWNER_LABEL,
    AgentContainer,
    http_json,
    podman,
    remove,
    run_container,
    start_agent,
)
from tests.containers.workload import CLIENT, SERVER

pytestmark = [pytest.mark.containers, pytest.mark.timeout(3000)]

REPO = Path(__file__).resolve().parents[2]
LLMSLO = str(REPO / ".venv" / "bin" / "llmslo")
RATE = 20  # requests per second per client: a new connection each


class Pair:
    """A server container and its client container, on the host's network."""

    def __init__(self, image: str, tag: str, seconds: float = 240):
        self.port = free_port()
        self.names = [f"llmslo-test-{tag}-srv-{os.getpid()}", f"llmslo-test-{tag}-cli-{os.getpid()}"]
        try:
            self.server = run_container(image, "-c", SERVER, str(self.port), name=self.names[0],
                                        entrypoint="python3")
            url = f"http://127.0.0.1:{self.port}/"
            wait_for(what=f"the {tag} server answering", check=lambda: urllib.request.urlopen(url, timeout=5).status == 200,
                       timeout_s=30, interval_s=0.5)
            self.client = run_container(image, "-c", CLIENT, url, str(RATE), str(seconds), name=self.names[1],
                                        entrypoint="python3")
        except BaseException:
            self.remove()  # the caller never gets the pair to remove
            raise

    def host_pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.server).stdout.strip())

    def remove(self) -> None:
        remove(*self.names)


def capture_api(agent: AgentContainer, target: dict, seconds: float = 10, baseline: float = 60) -> dict:
    body = json.dumps({"target": target, "probes": ["tcp_retrans", "tcp_connect", "runq_latency"],
                       "duration_s": seconds, "baseline_s": baseline}).encode()
    status, data = http_json(f"{agent.url}/v1/captures", agent.token, body, timeout=seconds + 60)
    assert status == 200, (status, data)
    return data


def capture_cli(agent: AgentContainer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LLMSLO, "capture", "--agent", agent.url, *args], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"LLMSLO_AGENT_TOKEN": agent.token},
                          stdin=subprocess.DEVNULL)


def retransmits(result: dict) -> float:
    return result["incident"]["tcp_retrans"]["counters"]["retransmits"]


def test_a_podman_workload_under_loss_is_captured_by_container_id_through_the_agent_container(
        images, agent_container):
    agent = agent_container
    lossy = quiet = None
    try:
        lossy = Pair(images["responder"], "lossy")
        quiet = Pair(images["responder"], "quiet")

        # What the runtime made: the server's cgroup, as the kernel reports it for its process.
        path = identity.pid_cgroup_path(lossy.host_pid())
        assert path == f"/libpod_parent/libpod-{lossy.server}", path
        ident = identity.parse_cgroup_path(path)
        assert (ident.container_id, ident.runtime, ident.pod_uid) == (lossy.server, "podman", None)

        time.sleep(40)  # the agent's recorder holds a baseline of both pairs without loss
        with faults.PacketLoss(lossy.port, 20), ThreadPoolExecutor(2) as pool:
            # As at an alert: the capture starts with the trouble, its baseline is the recorder's
            # 60 s before. From the host's CLI through the agent's API, every probe, on the
            # client by the id podman printed; at the same time, the quiet pair's client by its
            # short id with a runtime prefix.
            by_cli = pool.submit(capture_cli, agent, "--container", lossy.client, "--duration", "10s")
            by_short = pool.submit(capture_api, agent, {"containers": [f"podman://{quiet.client[:12]}"]})
            cli, quiet_result = by_cli.result(), by_short.result()
            # By cgroup, the lossy pair's server: its replies are lost too, and retransmitted.
            by_cgroup = capture_api(agent, {"cgroups": [path]}, seconds=5)

        print(cli.stdout)
        assert cli.returncode == 0, cli.stderr
        assert "verdict (kernel evidence only): network" in cli.stdout, cli.stdout
        lossy_retrans = float(re.search(r"tcp_retrans: retransmits=(\d+)", cli.stdout).group(1))
        assert lossy_retrans >= 10, cli.stdout
        # Per container: the quiet pair, on another port, kept its packets.
        assert retransmits(quiet_result) <= 1, quiet_result["incident"]["tcp_retrans"]
        assert quiet_result["workloads"][0]["container_id"] == quiet.client
        assert quiet_result["workloads"][0]["runtime"] == "podman"
        # By cgroup: the lossy server's own retransmits, counted for its container.
        assert retransmits(by_cgroup) >= 2, by_cgroup["incident"]["tcp_retrans"]
        assert by_cgroup["workloads"][0]["container_id"] == lossy.server
        # The agent scores the containers it found for its early warning, by container id.
        status, warnings = http_json(f"{agent.url}/v1/early-warnings", agent.token)
        assert status == 200
        scored = {w["labels"].get("container_id") for w in warnings["workloads"]}
        assert {lossy.server, lossy.client, quiet.server, quiet.client} <= scored, scored
    finally:
        for pair in (lossy, quiet):
            if pair:
                pair.remove()


def test_an_agent_container_without_the_nodes_kernel_headers_says_what_to_mount(images):
    """Without the node's /usr/src, /lib/modules/<release>/build is a dangling link here."""
    agent = start_agent(images["agent"], mounts=tuple(m for m in AGENT_MOUNTS if m != "/usr/src"))
    try:
        line = wait_for(what="the agent's line about kernel headers", check=lambda: next(
            (ln for ln in agent.logs().splitlines() if "no kernel headers" in ln), None), timeout_s=60)
        assert line.startswith("llmslo agent: no kernel headers for ")
        assert "Mount the node's /lib/modules and /usr/src read-only" in line
        # the line comes before the API listens
        status, health = wait_for(what="the agent's /healthz", check=lambda: http_json(f"{agent.url}/healthz", agent.token),
                                  timeout_s=60)
        assert status == 200 and "no kernel headers" in health["kernel_headers"]
    finally:
        remove(agent.name)


def test_stale_test_containers_are_swept(images):
    """A container a killed test run left behind (its owner's pid is gone) is removed."""
    from tests.containers.conftest import sweep_stale_containers

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"llmslo-test-stale-{os.getpid()}"
    podman("run", "-d", "--name", name, "--label", f"{OWNER_LABEL}={dead.pid}", "--network=host",
           "--entrypoint", "sleep", images["responder"], "300")
    try:
        assert podman("container", "exists", name, check=False).returncode == 0
        sweep_stale_containers()
        assert podman("container", "exists", name, check=False).returncode != 0
    finally:
        remove(name)


def test_the_responder_image_read_only_and_unprivileged_attributes_a_webhook_through_the_agent_container(
        images, agent_container):
    """The responder as the `single` overlay runs it: read-only root filesystem, uid 10001, its
    data on a volume. A webhook from the host is stored, captured through the agent container
    and attributed; the incident outlives a restart of the responder container."""
    agent = agent_container
    port, webhook_token = free_port(), "container-test-webhook"
    name, volume = f"llmslo-test-responder-{os.getpid()}", f"llmslo-test-data-{os.getpid()}"
    url = f"http://127.0.0.1:{port}"
    lossy = None
    try:
        run_container(images["responder"], "serve", "--host", "127.0.0.1", "--port", str(port), name=name,
                      options=("--read-only", "--user", "10001:10001", "-v", f"{volume}:/var/lib/llmslo:U",
                               "-e", f"LLMSLO_WEBHOOK_TOKEN={webhook_token}", "-e", f"LLMSLO_AGENT_URL={agent.url}",
                               "-e", f"LLMSLO_AGENT_TOKEN={agent.token}"))
        wait_for(what="the responder container's /healthz", check=lambda: http_json(f"{url}/healthz")[0] == 200, timeout_s=60)
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        assert podman("exec", name, "touch", "/opt/llmslo/x", check=False).returncode != 0  # read-only root

        lossy = Pair(images["responder"], "webhook")
        time.sleep(40)  # a baseline in the agent's recorder
        labels = {"alertname": "LLMTTFTBurnFast", "severity": "page", "container_id": lossy.server}
        with faults.PacketLoss(lossy.port, 20):
            time.sleep(5)
            status, accepted = http_json(f"{url}/webhook/alertmanager", webhook_token,
                                         json.dumps(alert_payload("firing", labels, time.time() - 5)).encode())
            assert status == 200 and accepted["status"] == "accepted", accepted
            incident = accepted["incident_id"]

            def attributed():
                code, inc = http_json(f"{url}/api/incidents/{incident}", webhook_token)
                return inc if code == 200 and inc.get("verdict") and inc.get("capture") else None
            inc = wait_for(what="the incident attributed", check=attributed, timeout_s=120, interval_s=2)
        assert inc["verdict"]["domains"] == ["network"], inc["verdict"]
        assert inc["capture"]["node"] == "podman-node"  # through the agent container
        assert inc["capture"]["workloads"][0]["container_id"] == lossy.server

        podman("restart", "-t", "10", name)
        wait_for(what="the restarted responder's /healthz", check=lambda: http_json(f"{url}/healthz")[0] == 200, timeout_s=60)
        code, again = http_json(f"{url}/api/incidents/{incident}", webhook_token)
        assert code == 200 and again["verdict"]["domains"] == ["network"]
    finally:
        if lossy:
            lossy.remove()
        remove(name)
        podman("volume", "rm", "-f", volume, check=False)


def bcc_trace_events(pid: int) -> list[str]:
    """Probe events bcc created through tracefs for ``pid`` (when the kernel lacks the perf
    uprobe PMU it writes them there, and they outlive the process unless removed)."""
    found = []
    for f in ("/sys/kernel/tracing/uprobe_events", "/sys/kernel/tracing/kprobe_events"):
        try:
            found += [line for line in Path(f).read_text().splitlines() if f"bcc_{pid}" in line]
        except OSError:
            continue
    return found


def test_nothing_stays_attached_after_the_agent_container_is_killed(agent_container):
    pid = agent_container.host_pid()
    held = held_prog_ids(pid)
    assert held, "the agent container's recorder holds no BPF program"
    t0 = time.monotonic()
    # podman may give up waiting for the runtime's exit file while the kernel is still closing
    # the dead process's BPF and perf descriptors (seconds, with a recorder's worth of them);
    # the kill itself is sent either way, and what counts is what the kernel still holds after.
    podman("kill", "--signal", "KILL", agent_container.id, check=False)
    wait_for(what="the killed agent's process gone", check=lambda: not Path(f"/proc/{pid}").exists(), timeout_s=60,
               interval_s=0.2)
    wait_for(what="the killed agent's programs unloaded", check=lambda: not (loaded_prog_ids() & held), timeout_s=15,
               interval_s=0.2)
    print(f"agent container killed: its {len(held)} programs unloaded {time.monotonic() - t0:.1f} s after SIGKILL")
    assert bcc_trace_events(pid) == []
    wait_for(what="podman seeing the agent container exited", check=lambda: podman(
        "inspect", "--format", "{{.State.Running}}", agent_container.id).stdout.strip() == "false", timeout_s=60)
