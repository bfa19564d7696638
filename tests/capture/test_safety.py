"""Probes are bounded and always detached: after a normal end, an error, a cancellation, and a
SIGKILL of the process holding them (checked with bpftool, independently of bcc)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from capture.agent import AgentBusy, CaptureAgent
from capture.schemas import CaptureRequest, CaptureTarget, RequestError
from tests.capture.conftest import held_prog_ids, loaded_prog_ids, until_armed

pytestmark = pytest.mark.kernel


def req(duration: float = 2, **target) -> CaptureRequest:
    return CaptureRequest(target=CaptureTarget(**(target or {"pids": [1]})),
                          probes=["tcp_retrans", "tcp_connect", "runq_latency"], duration_s=duration, baseline_s=0)


async def test_detached_after_normal_end():
    before = held_prog_ids()
    agent = CaptureAgent(recorder=False)
    task = asyncio.create_task(agent.capture(req(3)))
    await until_armed(agent)
    during = held_prog_ids() - before
    assert len(during) >= 8, "the three probes' programs should be loaded during the capture"
    result = await task
    assert loaded_prog_ids() & during == set()
    assert all(r.error is None for r in result.incident.values())


async def test_detached_after_cancellation():
    before = held_prog_ids()
    agent = CaptureAgent(recorder=False)
    task = asyncio.create_task(agent.capture(req(60)))
    await until_armed(agent)
    during = held_prog_ids() - before
    assert during
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loaded_prog_ids() & during == set()
    assert not agent.active


async def test_bad_target_touches_nothing():
    before = held_prog_ids()
    agent = CaptureAgent(recorder=False)
    with pytest.raises(RequestError, match="does not exist"):
        await agent.capture(req(cgroups=["/no-such-cgroup-llmslo"]))
    assert held_prog_ids() == before


async def test_concurrency_bound():
    agent = CaptureAgent(recorder=False, max_concurrent=1)
    first = asyncio.create_task(agent.capture(req(3)))
    await asyncio.sleep(0.2)
    with pytest.raises(AgentBusy):
        await agent.capture(req(1))
    await first


HOLDER = r"""
import asyncio, sys
from capture.agent import CaptureAgent
from capture.schemas import CaptureRequest, CaptureTarget
async def main():
    agent = CaptureAgent(recorder=True, recorder_interval_s=1)
    await agent.start()
    print("loaded", flush=True)
    await agent.capture(CaptureRequest(target=CaptureTarget(pids=[1]), probes=["runq_latency"], duration_s=60, baseline_s=0))
asyncio.run(main())
"""


def test_nothing_attached_after_sigkill():
    p = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "loaded"
        time.sleep(2)
        during = held_prog_ids(p.pid)
        assert during
    finally:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 10
    while loaded_prog_ids() & during and time.monotonic() < deadline:
        time.sleep(0.2)  # the kernel frees programs once the dead process's fds are closed
    assert loaded_prog_ids() & during == set()


async def test_event_budget_stops_the_probe():
    """A probe whose events exceed its budget is stopped early and says so."""
    agent = CaptureAgent(recorder=False, event_budgets={"runq_latency": 1})
    # Scope the node's root cgroup: every context switch is in scope, far over 1 event/s.
    result = await agent.capture(CaptureRequest(target=CaptureTarget(cgroups=["/"]), probes=["runq_latency"],
                                                duration_s=10, baseline_s=0))
    r = result.incident["runq_latency"]
    assert r.truncated and "budget" in r.truncated
    assert r.window_s < 5
