"""The capture agent's DaemonSet: the privileges and host mounts bcc needs (and no others), each
explained where it is granted, on every node, bounded, and reachable where the responder looks
for it."""
from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import (
    DEPLOY,
    REPO,
    Manifests,
    container_of,
    pod_labels,
    pod_spec,
    registered_routes,
    rendered,
)

SOURCE = DEPLOY / "base" / "agent-daemonset.yaml"
# mountPath -> host path; all read-only (docs/probes.md, "Production nodes").
HOST_MOUNTS = {
    "/sys/kernel/tracing": "/sys/kernel/tracing",
    "/sys/kernel/debug": "/sys/kernel/debug",
    "/lib/modules": "/lib/modules",
    "/usr/src": "/usr/src",
    "/sys/fs/cgroup": "/sys/fs/cgroup",
}
# What the comment above each grant must talk about: the reason, not just a label.
WHY = {
    "hostPID: true": ["uprobe", "/proc/PID/root", "/proc/PID/cgroup"],
    "privileged: true": ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_PTRACE",
                         "CAP_NET_ADMIN", "cgroup namespace"],
    "- name: tracefs": ["tracepoint"],
    "- name: debugfs": ["tracefs"],
    "- name: lib-modules": ["headers"],
    "- name: usr-src": ["headers"],
    "- name: cgroup": ["cgroup id", "cpu.stat"],
    "tolerations:": ["every node"],
}
AGENT_PORT = 8081


def comment_above(lines: list[str], index: int) -> str:
    """The comment lines directly above ``lines[index]`` (no blank line between), as one text."""
    block = []
    i = index - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        block.append(lines[i].lstrip()[1:].strip())
        i -= 1
    return " ".join(reversed(block))


def grant_line(lines: list[str], text: str) -> int:
    """The line granting ``text``; host path volumes are looked up under ``volumes:``."""
    start = 0
    if text.startswith("- name: "):
        start = next(i for i, line in enumerate(lines) if re.fullmatch(r"\s+volumes:", line))
    found = [i for i, line in enumerate(lines) if i > start and line.strip() == text]
    assert len(found) == 1, f"{SOURCE.name}: expected one line {text!r}, found {len(found)}"
    return found[0]


@pytest.fixture
def base() -> Manifests:
    return rendered("base")


def test_agent_runs_privileged_in_the_hosts_pid_namespace(manifests):
    spec = pod_spec(manifests.agent)
    assert spec["hostPID"] is True
    assert not spec.get("hostNetwork"), "the NetworkPolicy cannot guard an agent on the host's network"
    sc = container_of(manifests.agent)["securityContext"]
    assert sc["privileged"] is True
    assert sc.get("runAsUser", 0) == 0


def test_agent_mounts_exactly_the_host_paths_bcc_needs_read_only(manifests):
    spec = pod_spec(manifests.agent)
    host_volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in container_of(manifests.agent)["volumeMounts"]}
    assert {path: host_volumes.get(m["name"]) for path, m in mounts.items()} == HOST_MOUNTS
    assert all(mounts[p].get("readOnly") is True for p in HOST_MOUNTS), mounts
    assert set(host_volumes) == {m["name"] for m in mounts.values()}, "a host path volume nobody mounts"
    assert {v["hostPath"].get("type") for v in spec["volumes"] if "hostPath" in v} == {"Directory"}


@pytest.mark.parametrize("grant", sorted(WHY))
def test_every_privilege_and_host_mount_says_why(grant):
    lines = SOURCE.read_text().splitlines()
    comment = comment_above(lines, grant_line(lines, grant))
    assert len(comment) >= 40, f"{grant}: no explanation above it in {SOURCE.name}"
    missing = [word for word in WHY[grant] if word.lower() not in comment.lower()]
    assert not missing, f"{grant}: the comment does not mention {missing}: {comment}"


def test_agent_tolerates_every_taint(manifests):
    tolerations = pod_spec(manifests.agent)["tolerations"]
    assert {"operator": "Exists"} in tolerations, tolerations


def test_every_container_is_bounded(manifests):
    for workload in manifests.all("Deployment") + manifests.all("DaemonSet"):
        resources = container_of(workload)["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) >= {"cpu", "memory"}, (workload["metadata"]["name"], resources)
    # Requesting the memory it is limited to keeps the agent last in line for node-pressure
    # eviction (the DaemonSet's comment relies on it).
    agent = container_of(manifests.agent)["resources"]
    assert agent["requests"]["memory"] == agent["limits"]["memory"]


def test_agent_serves_its_api_on_the_named_port(manifests):
    c = container_of(manifests.agent)
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["api"]["containerPort"] == AGENT_PORT and ports["api"].get("protocol", "TCP") == "TCP"
    cmd = c["command"]
    assert cmd[:2] == ["llmslo", "agent"]
    flags = dict(zip(cmd[2::2], cmd[3::2]))
    assert flags == {"--host": "0.0.0.0", "--port": str(AGENT_PORT), "--node-name": "$(NODE_NAME)"}
    env = manifests.env(manifests.agent)
    assert env["NODE_NAME"].field == "spec.nodeName"
    assert env["LLMSLO_AGENT_TOKEN"].secret == ("llmslo-agent", "token")
    assert not env["LLMSLO_AGENT_TOKEN"].optional


def test_agent_probes_ask_the_unauthenticated_health_endpoint(manifests):
    api = REPO / "capture" / "api.py"
    token_free = set(re.findall(r'request\.path != "([^"]+)"', api.read_text()))
    assert token_free == {"/healthz"} and token_free <= registered_routes(api, "get"), \
        "the agent's token-free GET route moved; update the probes"
    c = container_of(manifests.agent)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "api"}, probe


def test_agent_selector_matches_its_pods(manifests):
    ds = manifests.agent
    assert ds["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "llmslo-agent"}
    assert pod_labels(ds)["app.kubernetes.io/name"] == "llmslo-agent"
    assert pod_spec(ds)["serviceAccountName"] == "llmslo-agent"
