"""process_exec against execs the test makes: a shell in the target cgroup runs /bin/true and
/bin/echo a known number of times; the same shell outside the cgroup must not be counted."""
from __future__ import annotations

import os
import subprocess

import pytest

from capture.agent import CaptureAgent
from capture.schemas import CaptureRequest, CaptureTarget
from lab.cgroups import WorkloadCgroup
from tests.capture.test_probes import capture_while_released

pytestmark = pytest.mark.kernel

# `true` and `echo` are shell builtins: the full paths make the shell exec the programs.
SCRIPT = ("read go; i=0; while [ $i -lt {t} ]; do /bin/true; i=$((i+1)); done; "
          "i=0; while [ $i -lt {e} ]; do /bin/echo x >/dev/null; i=$((i+1)); done; {extra} echo done")


def shell(script: str, cgroup: WorkloadCgroup | None) -> subprocess.Popen:
    enter = None
    if cgroup is not None:
        procs = cgroup.dir / "cgroup.procs"

        def enter() -> None:
            procs.write_text(str(os.getpid()))
    return subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=enter)


async def test_process_exec_counts_the_cgroups_execs_by_path(workload_cgroup):
    """5 x /bin/true and 3 x /bin/echo inside the cgroup are counted exactly, by path and by
    command name; 4 x /bin/true, 2 x /bin/echo and a /bin/sleep outside it are not. The shells
    themselves were exec'd before the capture attached, so they are not counted either."""
    inside = shell(SCRIPT.format(t=5, e=3, extra=""), workload_cgroup)
    outside = shell(SCRIPT.format(t=4, e=2, extra="/bin/sleep 0;"), None)
    agent = CaptureAgent(recorder=False)
    req = CaptureRequest(target=CaptureTarget(cgroups=[workload_cgroup.path]), probes=["process_exec"],
                         duration_s=8, baseline_s=0)
    result = await capture_while_released(agent, req, (inside, outside))
    r = result.incident["process_exec"]
    assert r.error is None, r.error
    assert r.counters["execs"] == 8
    assert {e["peer"]: e["count"] for e in r.top["executables"]} == {"/bin/true": 5, "/bin/echo": 3}
    assert {e["peer"]: e["count"] for e in r.top["commands"]} == {"true": 5, "echo": 3}
    assert r.events == 8 and r.lost == 0
    assert r.cost.bpf_run_count >= 8  # the program ran for every exec on the node, in scope or not
