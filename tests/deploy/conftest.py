"""The deployment as Kubernetes would receive it: each kustomization under deploy/ rendered once
with ``kubectl kustomize``, and helpers to read the rendered objects."""
from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Every directory under deploy/ holding a kustomization, as a path relative to deploy/.
KUSTOMIZATIONS = sorted(p.parent.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("kustomization.yaml"))
# The trees that deploy the toolkit (the prometheus one holds only the rules).
WORKLOAD_TREES = ("base", "overlays/single", "overlays/ha")
NAMESPACE = "llmslo"
AGENT_NAME = "llmslo-agent"
RESPONDER_NAME = "llmslo-responder"


def kustomize(tree: str) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "kustomize", str(DEPLOY / tree)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@functools.cache
def _rendered_text(tree: str) -> str:
    p = kustomize(tree)
    assert p.returncode == 0, f"kubectl kustomize deploy/{tree} failed:\n{p.stderr}"
    return p.stdout


@dataclass
class Manifests:
    """One kustomization's rendered objects."""

    tree: str
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"deploy/{self.tree}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def agent(self) -> dict[str, Any]:
        return self.one("DaemonSet", AGENT_NAME)

    @property
    def responder(self) -> dict[str, Any]:
        return self.one("Deployment", RESPONDER_NAME)

    def env(self, workload: dict[str, Any], container: str | None = None) -> dict[str, EnvSource]:
        """A container's environment as the kubelet would build it: envFrom ConfigMaps first,
        then env entries, which win."""
        c = container_of(workload, container)
        out: dict[str, EnvSource] = {}
        for source in c.get("envFrom", []):
            assert "configMapRef" in source, f"unexpected envFrom {source}"
            cm = self.one("ConfigMap", source["configMapRef"]["name"])
            out.update({k: EnvSource(value=v) for k, v in cm.get("data", {}).items()})
        for e in c.get("env", []):
            if "value" in e:
                out[e["name"]] = EnvSource(value=e["value"])
                continue
            ref = e["valueFrom"]
            if "secretKeyRef" in ref:
                s = ref["secretKeyRef"]
                out[e["name"]] = EnvSource(secret=(s["name"], s["key"]), optional=bool(s.get("optional")))
            elif "fieldRef" in ref:
                out[e["name"]] = EnvSource(field=ref["fieldRef"]["fieldPath"])
            else:
                raise AssertionError(f"unexpected valueFrom {ref}")
        return out


@dataclass
class EnvSource:
    value: str | None = None
    secret: tuple[str, str] | None = None  # (Secret name, key)
    optional: bool = False
    field: str | None = None  # downward API fieldPath


def rendered(tree: str) -> Manifests:
    return Manifests(tree, [o for o in yaml.safe_load_all(_rendered_text(tree)) if o])


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def container_of(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    if name is None:
        assert len(containers) == 1, [c["name"] for c in containers]
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def selects(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether an equality selector (non-empty) selects objects with these labels."""
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def registered_routes(source: Path, method: str) -> set[str]:
    """The paths an aiohttp module registers with ``router.add_<method>("...")``."""
    return set(re.findall(rf'add_{method}\("([^"]+)"', source.read_text()))


@pytest.fixture(params=WORKLOAD_TREES)
def manifests(request) -> Manifests:
    """Each tree that deploys the toolkit, rendered."""
    return rendered(request.param)
