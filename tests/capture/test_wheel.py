"""A wheel built from the tree carries the probes' BPF programs and runs a real capture from
where it is installed, not from the source tree."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_a_wheel_built_from_the_tree_runs_a_capture(tmp_path):
    # Built from a copy: setuptools leaves a build/ folder beside the sources it builds.
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(".git", ".venv", "build", "data", "tests", "results",
                                                               "__pycache__", "*.egg-info", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(tree)],
                   check=True, timeout=900, capture_output=True)
    [wheel] = list((tmp_path / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for probe in ("tcp_retrans", "dns", "tls_http", "runq_latency"):
        assert f"capture/probes/{probe}/program.bpf.c" in names, probe
    assert "capture/probes/include/common.h" in names
    assert "responder/attribution/calibration.json" in names
    assert not any(n.startswith("tests/") for n in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import capture; print(capture.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where  # the installed copy, not the tree

    out = subprocess.run([sys.executable, "-m", "responder.cli", "capture", "--pid", str(os.getpid()),
                          "--probes", "tcp_retrans,dns", "--duration", "1s", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["incident"]) == {"tcp_retrans", "dns"}, result
    assert not result["errors"], result["errors"]
