"""runq_latency cross-checked against the kernel's own run-delay accounting.

The brief asked for bcc's runqlat as the oracle. It cannot serve here: runqlat reads the woken
task's pid, tgid and ``__state`` from ``struct task_struct`` (raw tracepoint arguments), at the
offsets of the 6.1 headers bcc compiles against, while the kernel is 6.18 (docs/probes.md). It loads
and prints a histogram, but the fields are other fields: ``runqlat-bpfcc -L`` prints thread ids
such as 12132464 and 178129264 (pid_max is 32768), ``-P`` prints pid 4294936705, so its per-task
start times collide, its preemption test reads the wrong word, and ``-p PID`` can never match;
it has no cgroup filter either. Its numbers cannot be tied to the contended workload.

The ground truth instead: ``/proc/PID/task/TID/schedstat``, where the kernel itself accounts, per
thread, the time spent runnable but waiting for a CPU (``run_delay``, ns, added when the thread
gets the CPU, as our probe does) and the number of times it got the CPU (``pcount``). Summed
over the cgroup's threads across the same window, they must match our histogram's count and
mass. The probe is driven through ProbeSession (the agent's own loader) so that the kernel's
figures can be read right after arming and right after the last read: the two windows then
differ by milliseconds, not by the agent's compile time.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from capture.identity import ResolvedTarget
from capture.probes import CATALOG
from capture.probes.base import diff, to_result
from capture.schemas import Histogram
from capture.session import ProbeSession
from lab import faults
from tests.capture.test_probes import PERIODIC

pytestmark = pytest.mark.kernel



def schedstat(pids: list[int]) -> dict[int, tuple[int, int]]:
    """thread id -> (run_delay ns, times it got a CPU), for every thread of ``pids``."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    _, delay, count = map(int, f.read().split())
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            out[int(tid)] = (delay, count)
    return out


def kernel_window(a: dict[int, tuple[int, int]], b: dict[int, tuple[int, int]]) -> tuple[float, int, int]:
    """(total wait in us, number of waits, threads) between two schedstat readings."""
    both = [t for t in b if t in a]
    return (sum(b[t][0] - a[t][0] for t in both) / 1000, sum(b[t][1] - a[t][1] for t in both), len(both))


def mass(h: Histogram) -> tuple[float, float]:
    """Bounds on the sum of the waits in a log2 histogram: each wait of bucket ``u`` (values in
    [u/2, u) us; bucket 1 holds waits under 1 us) is at least u/2 and under u."""
    lo = sum(c * (u / 2 if u > 1 else 0) for u, c in h.buckets.items())
    hi = sum(c * u for u, c in h.buckets.items())
    return lo, hi


# The kernel ends a wait at the run-queue clock it read at the start of __schedule(), before
# picking the next task; the probe ends it at the sched_switch tracepoint, after the pick and
# after its own handler's work. Measured here (a nested VM): 4-12 us longer per wait.
PER_WAIT_US = 20


def compare(name: str, h: Histogram, kernel_us: float, kernel_n: int, threads: int) -> None:
    """The probe's waits against the kernel's over one window (tolerances: see the test)."""
    lo, hi = mass(h)
    edge_us = threads * 2 * max(h.buckets, default=0)
    lo -= PER_WAIT_US * h.count
    print(f"{name}: ours {h.count} waits, mass [{lo / 1e3:.1f}, {hi / 1e3:.1f}] ms (mid {0.75 * hi / 1e3:.1f}); "
          f"kernel {kernel_n} waits, {kernel_us / 1e3:.1f} ms over {threads} threads; "
          f">=1ms share {h.fraction_above(1024):.2f}")
    assert abs(h.count - kernel_n) <= max(25, 0.03 * kernel_n), (name, h.count, kernel_n)
    assert 0.97 * lo - edge_us <= kernel_us <= 1.03 * hi + edge_us, (name, lo, hi, kernel_us)


def test_runq_latency_agrees_with_the_kernels_run_delay(workload_cgroup):
    """A periodic task (0.5 ms of work every 2 ms) alone in its cgroup, then with 4 busy loops
    beside it on 2 CPUs. Over each window, against the kernel's schedstat of the same threads:

    - number of waits: within 3% or 25 (the kernel also counts a thread's first wait after the
      probe armed, before the probe knew the thread; measured here: 0.3-0.5% apart);
    - total wait: inside the bounds our log2 buckets allow ([u/2, u) per wait) with 3%, one
      longest-seen wait per thread at each window edge (a wait that began before a window is
      the kernel's, not ours) and PER_WAIT_US per wait (the two clocks stop at different points
      of __schedule()) to spare. In the calm window, whose waits are tens of microseconds, that
      last allowance makes the mass check loose: there the count is the sharp check;
    - contended: the bucket-midpoint estimate (0.75 u) of the total within 25% of the kernel's
      (measured: 1-5%), and both see the contention: the mean wait rises at least 4-fold from
      the calm window, per the kernel and per us, and most waits are >= 1 ms."""
    procs = workload_cgroup.dir / "cgroup.procs"
    worker = subprocess.Popen([sys.executable, "-c", PERIODIC],
                              preexec_fn=lambda: procs.write_text(str(os.getpid())))
    cid = os.stat(workload_cgroup.dir).st_ino
    session = ProbeSession(CATALOG["runq_latency"], ResolvedTarget(cgroup_ids={cid}))
    try:
        session.load()
        pids = workload_cgroup.pids()
        k0, r0 = schedstat(pids), session.read_raw()
        time.sleep(3.0)
        r1, k1 = session.read_raw(), schedstat(pids)
        with faults.CpuContention(workload_cgroup, 4):
            time.sleep(0.5)
            pids = workload_cgroup.pids()
            k2, r2 = schedstat(pids), session.read_raw()
            time.sleep(4.0)
            r3, k3 = session.read_raw(), schedstat(pids)
    finally:
        session.close()
        worker.kill()
        worker.wait()
    probe = CATALOG["runq_latency"]
    calm = to_result(probe, diff(r0, r1), None, 3.0).histograms["runq_wait"]
    busy = to_result(probe, diff(r2, r3), None, 4.0).histograms["runq_wait"]
    calm_k, busy_k = kernel_window(k0, k1), kernel_window(k2, k3)
    assert calm.count > 100 and busy.count > 100
    assert busy_k[2] == 5  # the worker and the 4 busy loops, one thread each
    compare("calm", calm, *calm_k)
    compare("contended", busy, *busy_k)
    mid = 0.75 * mass(busy)[1]
    assert abs(mid / busy_k[0] - 1) <= 0.25, (mid, busy_k[0])
    kernel_mean = (calm_k[0] / calm_k[1], busy_k[0] / busy_k[1])
    ours_mean = (0.75 * mass(calm)[1] / calm.count, mid / busy.count)
    print(f"mean wait calm/contended: kernel {kernel_mean[0]:.0f}/{kernel_mean[1]:.0f} us, "
          f"ours {ours_mean[0]:.0f}/{ours_mean[1]:.0f} us")
    assert kernel_mean[1] >= 4 * kernel_mean[0] and ours_mean[1] >= 4 * ours_mean[0]
    assert busy.fraction_above(1024) > 0.3
