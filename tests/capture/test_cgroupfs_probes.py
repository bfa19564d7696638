"""cpu_throttle and memory_pressure against real limits: a busy loop under a CPU quota and a
process allocating past a memory limit, in cgroups the test makes (v1 controllers on a hybrid
node, v2 elsewhere). Each figure is cross-checked against the cgroup's own files, read directly
by the test before and after the capture."""
from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capture import cgroupfs
from capture.agent import CaptureAgent
from capture.identity import unified_root
from capture.probes import CATALOG
from capture.schemas import CaptureRequest, CaptureTarget
from lab.cgroups import CpuQuota, MemoryLimit, WorkloadCgroup
from tests.capture.conftest import until_armed

pytestmark = pytest.mark.kernel

BUSY = "while True: pass\n"
SLEEPER = "import time\nwhile True: time.sleep(1)\n"
HOG = r"""
import sys
sys.stdin.readline()
chunks = []
while True:
    chunks.append(bytearray(8 << 20))  # touched pages: 8 MiB at a time until the limit
"""
PERIOD_US = 100_000


def spawn(code: str, dirs: list[Path], stdin=subprocess.DEVNULL) -> subprocess.Popen:
    def enter() -> None:
        for d in dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))
    return subprocess.Popen([sys.executable, "-c", code], stdin=stdin, preexec_fn=enter)


def keyed(path: Path) -> dict[str, int]:
    """The test's own reading of a flat keyed cgroup file."""
    out = {}
    for line in path.read_text().splitlines():
        name, value = line.split()
        out[name] = int(value)
    return out


def psi_totals(path: Path) -> dict[str, int]:
    return {line.split()[0]: int(line.rsplit("total=", 1)[1]) for line in path.read_text().splitlines()}


def throttling(quota: CpuQuota, unified: Path) -> dict[str, int]:
    """nr_periods, nr_throttled, throttled_us and CPU PSI, straight from the files."""
    st = keyed(quota.dir / "cpu.stat")
    us = st["throttled_time"] // 1000 if quota.version == 1 else st["throttled_usec"]
    psi = psi_totals(unified / "cpu.pressure")
    return {"nr_periods": st["nr_periods"], "nr_throttled": st["nr_throttled"], "throttled_us": us,
            "cpu_pressure_some_us": psi["some"]}


async def test_cpu_throttle_under_a_quota_and_without_one():
    """A busy loop limited to 0.2 cores is throttled in most 100 ms periods; the same loop with
    no quota is never throttled.

    Cross-check: the test reads the quota cgroup's cpu.stat itself right before and after the
    capture, so its window contains the probe's. The probe may not exceed the direct figures,
    and may fall short only by what fits in the time between the two windows (``gap``): one
    period per 100 ms of gap plus 2 at the edges, and gap (+2 periods) of throttled time or
    pressure stall (a single thread throttles one CPU's run queue at a time).
    Quota arithmetic: each period the loop runs 20 ms and waits ~80 ms, so over a window W the
    expected throttled time is ~0.8 W. Other tests share the 2 CPUs, so the loop may not always
    use its 20 ms (then it is not throttled in that period): at least W / 4 throttled and a
    quarter of the periods throttled are asserted."""
    limited_cg, free_cg = WorkloadCgroup("thr").create(), WorkloadCgroup("nothr").create()
    procs: list[subprocess.Popen] = []
    try:
        with CpuQuota("thr", 0.2, PERIOD_US) as quota, CpuQuota("nothr", None, PERIOD_US) as free:
            runs = []
            for q, cg in ((quota, limited_cg), (free, free_cg)):
                # v1: the unified cgroup names the workload, the v1 one limits it; v2: one cgroup
                unified = cg.dir if q.version == 1 else unified_root() / q.path.lstrip("/")
                procs.append(spawn(BUSY, [cg.dir, q.dir] if q.version == 1 else [q.dir]))
                runs.append((q, unified, cg.path if q.version == 1 else q.path))
            await asyncio.sleep(0.5)
            agent = CaptureAgent(recorder=False)
            reqs = [CaptureRequest(target=CaptureTarget(cgroups=[path]), probes=["cpu_throttle"],
                                   duration_s=4, baseline_s=0) for _, _, path in runs]
            before = [throttling(q, u) for q, u, _ in runs]
            t0 = time.monotonic()
            results = await asyncio.gather(*(agent.capture(r) for r in reqs))
            t1 = time.monotonic()
            after = [throttling(q, u) for q, u, _ in runs]
            quota_version = quota.version
    finally:
        for p in procs:
            p.kill()
            p.wait()
        limited_cg.remove()
        free_cg.remove()
    limited, unlimited = (r.incident["cpu_throttle"] for r in results)
    for r in (limited, unlimited):
        assert r.error is None, r.error
    print("limited:", limited.counters, limited.gauges, "direct:", [before[0], after[0]])
    print("unlimited:", unlimited.counters, unlimited.gauges)
    w = limited.window_s
    gap_s = (t1 - t0) - min(limited.window_s, unlimited.window_s)
    slack_periods = math.ceil(gap_s * 1e6 / PERIOD_US) + 2
    slack_us = gap_s * 1e6 + 2 * PERIOD_US
    for r, b, a in ((limited, before[0], after[0]), (unlimited, before[1], after[1])):
        for name in ("nr_periods", "nr_throttled"):
            direct = a[name] - b[name]
            assert direct - slack_periods <= r.counters[name] <= direct, (name, r.counters[name], direct)
        for name in ("throttled_us", "cpu_pressure_some_us"):
            direct = a[name] - b[name]
            assert direct - slack_us <= r.counters[name] <= direct, (name, r.counters[name], direct)
    assert limited.gauges["quota_cores"] == 0.2
    assert limited.gauges["cgroup_version"] == quota_version
    assert w / 0.1 * 0.8 <= limited.counters["nr_periods"] <= w / 0.1 + slack_periods
    assert limited.counters["nr_throttled"] >= limited.counters["nr_periods"] / 4
    assert limited.counters["throttled_us"] >= w * 1e6 / 4
    assert unlimited.counters["nr_throttled"] == 0 and unlimited.counters["throttled_us"] == 0
    assert "quota_cores" not in unlimited.gauges


def memory_files(mem: MemoryLimit) -> dict[str, int]:
    """limit hits, OOM kills and OOM events as the memory cgroup's own files say."""
    if mem.limit_file == "memory.max":
        ev = keyed(mem.dir / "memory.events")
        return {"limit_hits": ev["max"], "oom_kills": ev["oom_kill"], "oom_events": ev["oom"]}
    oom = keyed(mem.dir / "memory.oom_control")
    return {"limit_hits": int((mem.dir / "memory.failcnt").read_text()), "oom_kills": oom["oom_kill"],
            "oom_events": oom["oom_kill"]}


async def test_memory_pressure_counts_limit_hits_and_the_oom_kill(workload_cgroup):
    """A process allocating past a 96 MiB limit hits it (the kernel fails charges and reclaims)
    and is OOM-killed once. Limit hits, OOM kills and OOM events equal the differences of the
    memory cgroup's own files read directly before and after: nothing else runs in that cgroup,
    and the capture's window holds the whole allocation. The limit gauge is the limit set, and is
    still read after the last process died (the probe remembers where the v1 cgroup is)."""
    limit = 96 << 20
    with MemoryLimit("pressure", limit) as mem:
        v2 = mem.limit_file == "memory.max"
        target = "/" + str(mem.dir.relative_to(unified_root())) if v2 else workload_cgroup.path
        hog = spawn(HOG, [mem.dir] if v2 else [workload_cgroup.dir, mem.dir], stdin=subprocess.PIPE)
        try:
            before = memory_files(mem)
            agent = CaptureAgent(recorder=False)
            task = asyncio.create_task(agent.capture(CaptureRequest(
                target=CaptureTarget(cgroups=[target]), probes=["memory_pressure"], duration_s=5, baseline_s=0)))
            await until_armed(agent)
            hog.stdin.write(b"go\n")
            hog.stdin.flush()
            code = await asyncio.to_thread(hog.wait, 20)
            result = await task
            after = memory_files(mem)
        finally:
            if hog.poll() is None:
                hog.kill()
                hog.wait()
    assert code == -signal.SIGKILL  # ground truth: the kernel killed it
    r = result.incident["memory_pressure"]
    assert r.error is None, r.error
    print("memory:", r.counters, r.gauges, "direct:", before, after)
    direct = {k: after[k] - before[k] for k in after}
    assert direct["oom_kills"] == 1
    assert r.counters["oom_kills"] == 1
    assert r.counters["limit_hits"] == direct["limit_hits"] > 0
    assert r.counters["oom_events"] == direct["oom_events"] >= 1
    assert r.gauges["limit_bytes"] == limit
    assert r.gauges["cgroup_version"] == (2 if v2 else 1)
    assert 0 <= r.gauges["usage_bytes"] < limit


def test_node_wide_sample_maps_every_cgroup_and_is_bounded():
    """The recorder's read (``sample(None)``) walks the unified hierarchy: it reports the test's
    CPU-limited and memory-limited cgroups, under their unified ids, among the node's others,
    and never more than MAX_CGROUPS cgroups; a smaller bound is honoured breadth first."""
    cpu_cg, mem_cg = WorkloadCgroup("reccpu").create(), WorkloadCgroup("recmem").create()
    procs: list[subprocess.Popen] = []
    try:
        with CpuQuota("reccpu", 0.5) as quota, MemoryLimit("recmem", 128 << 20) as mem:
            cpu_dirs = [cpu_cg.dir, quota.dir] if quota.version == 1 else [quota.dir]
            mem_dirs = [mem_cg.dir, mem.dir] if mem.limit_file != "memory.max" else [mem.dir]
            procs += [spawn(SLEEPER, cpu_dirs), spawn(SLEEPER, mem_dirs)]
            time.sleep(0.3)
            cpu_id = os.stat(cpu_dirs[0]).st_ino
            mem_id = os.stat(mem_dirs[0]).st_ino
            t0 = time.thread_time()
            cpu_raw = CATALOG["cpu_throttle"].sample(None)
            mem_raw = CATALOG["memory_pressure"].sample(None)
            cost_s = time.thread_time() - t0
            n_walked = len(cgroupfs.walk())
            two = cgroupfs.walk(max_cgroups=2)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cpu_cg.remove()
        mem_cg.remove()
    print(f"walked {n_walked} cgroups; both samples {cost_s * 1000:.1f} ms CPU; "
          f"{len(cpu_raw)} + {len(mem_raw)} entries")
    assert cpu_raw[("g", cpu_id, "quota_cores")] == 0.5
    assert mem_raw[("g", mem_id, "limit_bytes")] == 128 << 20
    ids = {k[1] for k in cpu_raw} | {k[1] for k in mem_raw}
    assert {cpu_id, mem_id} <= ids and len(ids) >= 2
    assert len({k[1] for k in cpu_raw}) <= cgroupfs.MAX_CGROUPS
    assert 2 <= n_walked <= cgroupfs.MAX_CGROUPS
    assert [c.path for c in two][0] == "/" and len(two) == 2
    assert two[0].id == os.stat(unified_root()).st_ino


def test_sweep_removes_v1_limit_cgroups_left_by_a_killed_run():
    """A run killed with SIGKILL leaves its memory-limit and CPU-quota cgroups behind; the next
    run's sweep removes them (their names end in the dead run's pid)."""
    import subprocess
    import sys

    from lab import cgroups as lab_cgroups

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    left = []
    for name, cls, arg in (("stale", lab_cgroups.MemoryLimit, 64 << 20), ("stale", lab_cgroups.CpuQuota, 0.5)):
        cg = cls(name, arg)
        cg.dir = cg.dir.with_name(cg.dir.name.rsplit("-", 1)[0] + f"-{pid}")
        cg.dir.mkdir()
        left.append(cg.dir)
    removed = lab_cgroups.sweep_stale()
    assert all(str(d) in removed and not d.exists() for d in left), removed
