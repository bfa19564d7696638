"""The recorder's sampled probes, loaded in the kernel: backend_latency's per-call tracepoints
are attached one interval in every few and detached in between (really gone from the kernel's
tracepoints, the connect/close bookkeeping still attached), a connection opened while they were
detached is measured once they are back, and a window's rates count the attached time only."""
from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from capture.recorder import Recorder
from tests.capture.test_backend_latency import DELAY_SERVER, spawn, stop

pytestmark = pytest.mark.kernel

# One request every PERIOD_S on a connection opened at once (while the per-call tracepoints are
# detached: the recorder pauses them at start), for RUN_S.
PERIOD_S, RUN_S = 0.05, 9.0
STEADY_CLIENT = r"""
import socket, sys, time
port, period, run_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
conn = socket.create_connection(("127.0.0.1", port))
print("connected", flush=True)
lines = conn.makefile("rb")
end, n = time.monotonic() + run_s, 0
while time.monotonic() < end:
    conn.sendall(b"query\n")
    assert lines.readline() == b"reply\n"
    n += 1
    time.sleep(period)
print("done", n, flush=True)
"""


async def test_a_sampled_probe_is_attached_one_interval_in_three_and_counts_only_then(workload_cgroup):
    server = spawn(sys.executable, "-c", DELAY_SERVER, "0.01")
    rec = Recorder(probes=[], sampled=["backend_latency"], interval_s=1.0, sample_every=3, history_s=60)
    client = None
    try:
        port = int(server.stdout.readline())
        await asyncio.to_thread(rec.start)
        assert rec.errors == {} and "backend_latency" in rec.sessions
        session = rec.sessions["backend_latency"]
        attached = {tp.decode() for tp in session.bpf.tracepoint_fds}
        assert not rec._sampled_on and "syscalls:sys_enter_read" not in attached, attached
        assert {"syscalls:sys_enter_connect", "syscalls:sys_enter_close"} <= attached
        t0 = time.time()
        client = spawn(sys.executable, "-c", STEADY_CLIENT, str(port), str(PERIOD_S), str(RUN_S),
                       cgroup=workload_cgroup)
        assert client.stdout.readline().strip() == "connected"
        states = set()
        while client.poll() is None:
            with rec._lock:  # the recorder switches under it
                states.add(("syscalls:sys_enter_read" in {tp.decode() for tp in session.bpf.tracepoint_fds},
                            rec._sampled_on))
            await asyncio.sleep(0.1)
        out = client.stdout.read().split()
        assert out[:1] == ["done"], out
        sent = int(out[1])
        t1 = time.time()
        assert states == {(True, True), (False, False)}, states  # attached exactly when on, and both seen
        await asyncio.sleep(1.2)  # the last interval is recorded
        cgid = os.stat(workload_cgroup.dir).st_ino
        result, note = rec.window("backend_latency", {cgid}, t0, t1)
        assert result is not None, note
        span = t1 - t0
        assert "sampled: backend_latency attached" in note, note
        # about a third of the span was attached (whole intervals: one either way at the edges)
        assert span / 3 - 1.5 <= result.window_s <= span / 3 + 1.5, (result.window_s, span)
        requests = result.counters["requests"]
        assert 0 < requests < sent * 0.6, (requests, sent)
        # the rate over the attached time is the client's own rate, not diluted by the gaps
        own_rate = sent / RUN_S
        assert 0.6 * own_rate <= requests / result.window_s <= 1.4 * own_rate, (requests, result.window_s, own_rate)
        # each reply took the server's 10 ms: nothing was timed across a pause
        assert result.histograms["latency"].quantile(0.99) < 65536, result.histograms["latency"]
        assert result.histograms["latency"].quantile(0.5) >= 8192
        status = rec.status()["sampled"]
        assert status["probes"] == ["backend_latency"] and status["one_interval_in"] == 3
        # the always-on series and /metrics totals leave the sampled probe out
        assert all("backend_latency.requests" not in iv["counters"] for iv in rec.series({cgid}, t0, t1))
        assert not any(k[0] == "backend_latency" for k in rec.totals)
    finally:
        if client is not None:
            stop(client)
        stop(server)
        await asyncio.to_thread(rec.stop)
    assert rec.sessions == {}


BUSY = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass\n"


async def test_the_run_queue_probe_is_sampled_and_never_times_a_wait_across_a_pause(workload_cgroup):
    """runq_latency in the recorder: its scheduler tracepoints come and go with the samples, three
    busy threads on two CPUs are seen waiting while it is attached, and no wait spans a pause (an
    enqueue time kept across one would read as seconds)."""
    rec = Recorder(probes=[], sampled=["runq_latency"], interval_s=1.0, sample_every=3, history_s=60)
    busy = []
    try:
        await asyncio.to_thread(rec.start)
        assert rec.errors == {} and "runq_latency" in rec.sessions
        session = rec.sessions["runq_latency"]
        t0 = time.time()
        busy = [spawn(sys.executable, "-c", BUSY, "7", cgroup=workload_cgroup) for _ in range(3)]
        states = set()
        while any(p.poll() is None for p in busy):
            with rec._lock:
                states.add(("sched:sched_switch" in {tp.decode() for tp in session.bpf.tracepoint_fds}, rec._sampled_on))
            await asyncio.sleep(0.1)
        t1 = time.time()
        assert states == {(True, True), (False, False)}, states
        await asyncio.sleep(1.2)
        cgid = os.stat(workload_cgroup.dir).st_ino
        result, note = rec.window("runq_latency", {cgid}, t0, t1)
        assert result is not None and "sampled: runq_latency attached" in note, note
        waits = result.histograms["runq_wait"]
        assert waits.count >= 50, waits  # three threads on two CPUs wait all the time
        assert waits.quantile(1.0) < 2 ** 20, waits  # no wait of a second or more: none across a pause
    finally:
        for p in busy:
            stop(p)
        await asyncio.to_thread(rec.stop)
