"""The image build files (deploy/images/) as text: consistent with the tree they copy, the
project's packaging and the manifests that run them. tests/containers builds and runs them."""
from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.deploy.conftest import DEPLOY, REPO, container_of, pod_spec, rendered

IMAGES = {"agent": DEPLOY / "images" / "agent.Dockerfile", "responder": DEPLOY / "images" / "responder.Dockerfile"}


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(x for x in path.read_text().splitlines() if not x.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def apt_packages(path) -> set[str]:
    found = set()
    for _op, args in instructions(path):
        for m in re.finditer(r"apt-get install ((?:\S+\s*)+?)(?:&&|$)", args):
            found |= {w for w in m.group(1).split() if not w.startswith("-")}
    return found


def copied(path) -> set[str]:
    """Every COPY source (all arguments but the destination)."""
    return {src.rstrip("/") for op, args in instructions(path) if op == "COPY" for src in args.split()[:-1]}


def dockerignore() -> set[str]:
    return {x.strip() for x in (REPO / ".dockerignore").read_text().splitlines() if x.strip() and not x.startswith("#")}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_build_on_debian_bookworm(image):
    froms = [args for op, args in instructions(IMAGES[image]) if op == "FROM"]
    assert froms == ["debian:bookworm-slim"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_copy_what_the_install_and_the_run_need(image):
    sources = copied(IMAGES[image])
    assert all((REPO / s).exists() for s in sources), [s for s in sources if not (REPO / s).exists()]
    assert not sources & dockerignore(), "COPY of a path the build context leaves out"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    # pip install -e needs every listed package and the readme; the playbooks are read from
    # beside the packages at run time (the probes' programs are inside capture/).
    assert packages | {"pyproject.toml", project["project"]["readme"], "playbooks"} <= sources


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_run_llmslo_as_the_manifests_do(image):
    entry = [json.loads(args) for op, args in instructions(IMAGES[image]) if op == "ENTRYPOINT"]
    assert entry == [["llmslo"]]
    assert "llmslo" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    m = rendered("base")
    workload = m.agent if image == "agent" else m.responder
    assert container_of(workload)["command"][0] == "llmslo"


def test_agent_image_has_bcc_from_debian_and_no_kernel_headers():
    packages = apt_packages(IMAGES["agent"])
    assert {"python3-bpfcc", "libbpfcc", "bpfcc-tools", "kmod"} <= packages, packages
    assert not [p for p in packages if p.startswith("linux-headers")], "headers must be the node's own"
    assert "import bcc" in IMAGES["agent"].read_text()


def test_responder_image_runs_as_the_user_the_deployment_names():
    assert "python3-bpfcc" not in apt_packages(IMAGES["responder"])
    users = [args for op, args in instructions(IMAGES["responder"]) if op == "USER"]
    sc = pod_spec(rendered("base").responder)["securityContext"]
    assert users == [f"{sc['runAsUser']}:{sc['runAsGroup']}"]
