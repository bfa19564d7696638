"""The CI subset of the lab, run as a user runs it: `llmslo lab run` on lab/scenarios/ci.yaml with
every ablation mode, on four of its scenarios (`--only`): a kernel-visible network fault, a
provider fault, CPU starvation and a policy fault only traces can see, about 2 minutes each,
which keeps `make test` inside its time budget on 2 vCPUs. It must produce a scorecard with one
case per scenario in each mode, and leave no nft table, cgroup, process or temporary directory
behind. Accuracy is not asserted here (the phases are too short for the targets); all eight run
with `llmslo lab run --scenarios lab/scenarios/ci.yaml --out DIR`; the standard suite's figures
are in docs/lab.md."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from lab import faults
from lab.harness import REPO, lab_processes
from tests.lab.leftovers import lab_cgroups, lab_dirs

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(3600)]

MODES = ("combined", "traces-only", "kernel-only")
SUITE = REPO / "lab" / "scenarios" / "ci.yaml"
ONLY = ("ci-network-loss", "ci-provider-429", "ci-cpu-throttle", "ci-policy-block")


def test_ci_suite_produces_a_scorecard_per_mode_and_cleans_up(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "responder.cli", "lab", "run", "--scenarios", str(SUITE), "--out", str(out)]
    for mode in MODES:
        argv += ["--mode", mode]
    for name in ONLY:
        argv += ["--only", name]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=55 * 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-4000:]
    names = [s["name"] for s in yaml.safe_load(SUITE.read_text())["scenarios"] if s["name"] in ONLY]
    assert sorted(names) == sorted(ONLY)
    cases = {n: json.loads((out / "cases" / f"{n}.json").read_text()) for n in names}
    # Every case checked its baseline; one whose baseline stayed unhealthy (extended, the service
    # restarted) is recorded as invalid with the reasons, and the scorecard leaves it out.
    for case in cases.values():
        check = case["baseline_check"]
        assert check is not None, (case["name"], case["error"], case["notes"])
        assert check["healthy"] == (case["invalid"] is None), case["name"]
        assert check["healthy"] or check["problems"]
    valid = sorted(n for n, c in cases.items() if not c["invalid"])
    assert len(valid) >= len(names) - 1, {n: c["invalid"] for n, c in cases.items()}
    for mode in MODES:
        card = json.loads((out / mode / "scorecard.json").read_text())
        assert card["mode"] == mode
        assert sorted(c["name"] for c in card["cases"]) == valid
        assert sorted(c["name"] for c in card["invalid"]) == sorted(set(names) - set(valid))
        for case in card["cases"]:
            assert isinstance(case["predicted"], list) and isinstance(case["detected"], bool)
            assert case["expect"], case
        assert (out / mode / "scorecard.md").is_file() and (out / mode / "confusion.png").stat().st_size > 1000
    # every case was investigated by the real pipeline: an incident with a verdict and a capture cost
    for name in valid:
        assert cases[name]["incident"]["verdict"] is not None, name
    owner = proc.pid
    assert faults.lab_tables(owner) == []
    assert lab_cgroups(owner) == []
    assert lab_processes(owner) == {}
    assert lab_dirs(owner) == []
