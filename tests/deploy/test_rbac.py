"""RBAC: each component reads the API and nothing else (get/list/watch, only the kinds its code
reads, never Secrets), and what its code calls is granted (the grants are checked against the
kubernetes client calls in capture/ and responder/, so a new read without a rule fails here)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.conftest import NAMESPACE, REPO, Manifests, pod_spec

READ_VERBS = {"get", "list", "watch"}
# ClusterRole -> {(API group, resource): verbs}
EXPECTED = {
    "llmslo-agent": {
        ("", "pods"): {"get", "list"},
        ("", "services"): {"get", "list"},
        ("discovery.k8s.io", "endpointslices"): {"get", "list"},
        ("apps", "replicasets"): {"get", "list"},
        ("batch", "jobs"): {"get", "list"},
    },
    "llmslo-responder": {
        ("", "pods"): {"get", "list", "watch"},
        ("", "services"): {"get", "list", "watch"},
        ("apps", "replicasets"): {"get", "list", "watch"},
        ("batch", "jobs"): {"get", "list", "watch"},
    },
}
# Which code runs under which ClusterRole.
CODE = {"llmslo-agent": REPO / "capture", "llmslo-responder": REPO / "responder"}
# The kubernetes client's resource spellings -> (API group, resource).
RESOURCES = {
    "pod": ("", "pods"), "service": ("", "services"), "endpoint_slice": ("discovery.k8s.io", "endpointslices"),
    "replica_set": ("apps", "replicasets"), "job": ("batch", "jobs"), "deployment": ("apps", "deployments"),
    "stateful_set": ("apps", "statefulsets"), "daemon_set": ("apps", "daemonsets"), "cron_job": ("batch", "cronjobs"),
    "config_map": ("", "configmaps"), "secret": ("", "secrets"), "endpoints": ("", "endpoints"),
}
_CALL = re.compile(r"\b(list|read)_(?:namespaced_([a-z_]+)|([a-z_]+?)_for_all_namespaces)\b")


def grants(m: Manifests, role: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in m.one("ClusterRole", role)["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def calls(code: Path) -> dict[tuple[str, str], set[str]]:
    """(group, resource) -> verbs the modules under ``code`` use through the kubernetes client:
    read_namespaced_X is get; list_* is list, and also watch in a module that streams watches."""
    needed: dict[tuple[str, str], set[str]] = {}
    for source in code.rglob("*.py"):
        text = source.read_text()
        watches = "watch.Watch" in text
        for verb, namespaced, all_ns in _CALL.findall(text):
            name = namespaced or all_ns
            assert name in RESOURCES, f"{source.name}: {verb}_{name}: add its resource to RESOURCES"
            verbs = {"get"} if verb == "read" else {"list", "watch"} if watches else {"list"}
            needed.setdefault(RESOURCES[name], set()).update(verbs)
    return needed


def test_only_the_two_cluster_roles_exist(manifests):
    assert {r["metadata"]["name"] for r in manifests.all("ClusterRole")} == set(EXPECTED)
    assert not manifests.all("Role") and not manifests.all("RoleBinding")


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_roles_grant_exactly_the_reads_listed(manifests, role):
    got = grants(manifests, role)
    assert got == EXPECTED[role]
    assert all(verbs <= READ_VERBS for verbs in got.values())
    assert not any(resource in ("secrets", "*") or group == "*" for group, resource in got)


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_roles_cover_every_api_read_the_code_makes(manifests, role):
    needed = calls(CODE[role])
    assert needed, f"no Kubernetes API call found under {CODE[role]}: did the client change?"
    got = grants(manifests, role)
    missing = {k: v - got.get(k, set()) for k, v in needed.items() if v - got.get(k, set())}
    assert not missing, f"{role} lacks {missing}"


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_each_role_is_bound_to_its_components_service_account(manifests, role):
    binding = manifests.one("ClusterRoleBinding", role)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": role, "namespace": NAMESPACE}]
    manifests.one("ServiceAccount", role)
    workload = manifests.agent if role == "llmslo-agent" else manifests.responder
    assert pod_spec(workload)["serviceAccountName"] == role
