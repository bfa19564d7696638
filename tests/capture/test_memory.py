"""oom_kill against a real OOM kill: a process in a memory-limited cgroup allocates past the
limit; the kernel kills it; the probe, scoped to the process's cgroup, counts exactly one."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from capture.agent import CaptureAgent
from capture.schemas import CaptureRequest, CaptureTarget
from lab.cgroups import MemoryLimit
from tests.capture.conftest import until_armed

pytestmark = pytest.mark.kernel

HOG = r"""
import sys
sys.stdin.readline()
chunks = []
while True:
    chunks.append(bytearray(8 << 20))  # touched pages: 8 MiB at a time until the limit
"""


async def test_oom_kill_is_counted_for_the_victims_cgroup(workload_cgroup):
    with MemoryLimit("oom", 96 << 20) as mem:
        procs = workload_cgroup.dir / "cgroup.procs"

        def enter() -> None:
            procs.write_text(str(os.getpid()))
            mem.add(os.getpid())

        hog = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE, preexec_fn=enter)
        agent = CaptureAgent(recorder=False)
        task = asyncio.create_task(agent.capture(CaptureRequest(
            target=CaptureTarget(cgroups=[workload_cgroup.path]), probes=["oom_kill"], duration_s=5, baseline_s=0)))
        try:
            await until_armed(agent)
            hog.stdin.write(b"go\n")
            hog.stdin.flush()
            code = await asyncio.to_thread(hog.wait, 20)
            result = await task
        finally:
            if hog.poll() is None:
                hog.kill()
                hog.wait()
    assert code == -signal.SIGKILL  # ground truth: the kernel killed it
    r = result.incident["oom_kill"]
    assert r.error is None
    assert r.counters["oom_kills"] == 1
    assert r.top["victims"][0]["peer"].startswith("python")
