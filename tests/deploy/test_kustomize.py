"""Every kustomization under deploy/ renders, and what it renders is valid Kubernetes: checked
against the API's own schemas (kubernetes-validate, strict: an unknown or misspelt field fails)
for two API versions, all in the toolkit's namespace, and with no Secret in it."""
from __future__ import annotations

import re

import kubernetes_validate
import pytest

from tests.deploy.conftest import (
    KUSTOMIZATIONS,
    NAMESPACE,
    REPO,
    WORKLOAD_TREES,
    container_of,
    kustomize,
    rendered,
)

# The oldest Kubernetes the manifests are checked against, and the newest the pinned
# kubernetes-validate range is sure to carry.
SCHEMA_VERSIONS = ("1.30", "1.33")
# Custom resources: no built-in schema (test_prometheus_rule.py checks the rules with promtool).
CUSTOM_KINDS = {"PrometheusRule"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def test_the_kustomizations_are_the_documented_ones():
    assert KUSTOMIZATIONS == ["base", "overlays/ha", "overlays/single", "prometheus"]


@pytest.mark.parametrize("tree", KUSTOMIZATIONS)
def test_every_kustomization_renders(tree):
    p = kustomize(tree)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr
    assert rendered(tree).objects


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("tree", KUSTOMIZATIONS)
def test_rendered_objects_validate_against_the_kubernetes_schemas(tree, version):
    errors, checked = [], 0
    for obj in rendered(tree).objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")
    assert not errors, "\n".join(errors)
    if tree in WORKLOAD_TREES:
        assert checked >= 12, checked


@pytest.mark.parametrize("tree", KUSTOMIZATIONS)
def test_every_namespaced_object_is_in_the_toolkits_namespace(tree):
    for obj in rendered(tree).objects:
        ns = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert ns is None, obj["metadata"]
        else:
            assert ns == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']} is in {ns!r}"
        for subject in obj.get("subjects", []):
            assert subject.get("namespace") == NAMESPACE, subject


@pytest.mark.parametrize("tree", KUSTOMIZATIONS)
def test_no_secret_value_is_shipped(tree):
    """Secrets are created by the operator (docs/kubernetes.md), never rendered from placeholders, and
    credentials reach containers only through secretKeyRef."""
    m = rendered(tree)
    assert not m.all("Secret")
    credential = re.compile(r"TOKEN|SECRET|PASSWORD|DATABASE_URL")
    for workload in m.all("Deployment") + m.all("DaemonSet"):
        for name, source in m.env(workload).items():
            if credential.search(name):
                assert source.secret is not None, f"{workload['metadata']['name']}: {name} is not from a Secret"
    for cm in m.all("ConfigMap"):
        assert not [k for k in cm.get("data", {}) if credential.search(k)], cm["data"]


def test_workloads_run_the_images_the_kustomization_names(manifests):
    images = {container_of(w)["image"] for w in manifests.all("Deployment") + manifests.all("DaemonSet")}
    assert images == {"registry.example.com/llmslo/agent:0.1.0", "registry.example.com/llmslo/responder:0.1.0"}


def doc_section(doc: str, title: str) -> str:
    text = (REPO / "docs" / doc).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_docs_create_every_secret_the_pods_read():
    """Secrets are made by hand from the documented commands, so each key a pod reads must have one."""
    section = doc_section("kubernetes.md", "Install on Kubernetes").replace("\\\n", " ")
    documented = set()
    for line in section.splitlines():
        if m := re.search(r"kubectl -n llmslo create secret generic (\S+)(.*)", line):
            documented |= {(m.group(1), key) for key in re.findall(r"--from-literal=([\w-]+)=", m.group(2))}
    referenced = set()
    for tree in WORKLOAD_TREES:
        m = rendered(tree)
        for workload in m.all("Deployment") + m.all("DaemonSet"):
            referenced |= {s.secret for s in m.env(workload).values() if s.secret}
    assert referenced and referenced <= documented, referenced - documented


def test_deployment_docs_name_files_that_exist():
    text = (doc_section("kubernetes.md", "Install on Kubernetes")
            + doc_section("probes.md", "What the agent can see, and what its privileges buy"))
    paths = set(re.findall(r"`(deploy/[\w./-]+?)`", text)) | set(re.findall(r"-[fk] (deploy/[\w./-]+)", text))
    assert len(paths) >= 8, paths
    assert [p for p in sorted(paths) if not (REPO / p).exists()] == []
