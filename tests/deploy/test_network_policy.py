"""NetworkPolicy: only the responder's pods reach the agents, and only on the agents' API
port; the responder's one port is open to its callers. Policies add up, so no other policy may
open the agents wider."""
from __future__ import annotations

from tests.deploy.conftest import container_of, pod_labels, selects


def policies_selecting(manifests, labels):
    return [p for p in manifests.all("NetworkPolicy") if selects(p["spec"]["podSelector"]["matchLabels"], labels)]


def test_only_the_responder_reaches_the_agents_api(manifests):
    agent_labels, responder_labels = pod_labels(manifests.agent), pod_labels(manifests.responder)
    policies = policies_selecting(manifests, agent_labels)
    assert len(policies) == 1, [p["metadata"]["name"] for p in policies]
    spec = policies[0]["spec"]
    assert "Ingress" in spec["policyTypes"]
    [rule] = spec["ingress"]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespaceSelector or ipBlock: the responder's pods alone"
    assert selects(peer["podSelector"]["matchLabels"], responder_labels)
    assert not selects(peer["podSelector"]["matchLabels"], agent_labels)
    api = next(p for p in container_of(manifests.agent)["ports"] if p["name"] == "api")
    assert rule["ports"] == [{"protocol": "TCP", "port": api["containerPort"]}]


def test_the_responders_port_is_open_and_nothing_else(manifests):
    policies = policies_selecting(manifests, pod_labels(manifests.responder))
    assert len(policies) == 1, [p["metadata"]["name"] for p in policies]
    spec = policies[0]["spec"]
    assert "Ingress" in spec["policyTypes"]
    http = next(p for p in container_of(manifests.responder)["ports"] if p["name"] == "http")
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": http["containerPort"]}]}]
