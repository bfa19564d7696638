"""The flight recorder and the agent's always-on side, against real events: what a workload did
before a capture is still there after the fault stopped, over /v1/recorder and /metrics; new
egress peers are told apart from the baseline's; preloaded probes cost nothing until attached."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from capture.agent import CaptureAgent
from capture.api import make_app
from capture.recorder import MAX_KEYS_PER_INTERVAL, Recorder, _bounded
from capture.schemas import CaptureRequest, CaptureTarget
from capture.session import ProbeSession
from tests.capture.test_probes import closed_port, spawn_in

pytestmark = pytest.mark.kernel

TOKEN = "recorder-test-token"

CONNECT = r"""
import socket, sys
sys.stdin.readline()
for port, n in zip(sys.argv[1::2], sys.argv[2::2]):
    for _ in range(int(n)):
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()
        except ConnectionRefusedError:
            pass
print("done", flush=True)
sys.stdin.readline()
"""


async def connect_from(cgroup, *port_counts: int) -> None:
    p = spawn_in(cgroup, "-c", CONNECT, *map(str, port_counts))
    try:
        p.stdin.write("go\n")
        p.stdin.flush()
        assert (await asyncio.to_thread(p.stdout.readline)).strip() == "done"
    finally:
        p.kill()
        p.wait()


@pytest.fixture
async def recording_agent():
    agent = CaptureAgent(recorder=True, recorder_interval_s=1.0, recorder_history_s=120, preload=False)
    agent.recorder.probe_names = ["tcp_connect", "process_exec"]
    server = TestServer(make_app(agent, TOKEN), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()  # runs the app's start-up: the recorder loads and samples
    try:
        yield agent, client
    finally:
        await client.close()


async def test_recorder_keeps_what_happened_after_the_fault_stopped(recording_agent, workload_cgroup):
    agent, client = recording_agent
    bad = closed_port()
    t0 = time.time()
    await connect_from(workload_cgroup, bad, 9)
    await asyncio.sleep(2.5)  # the fault is over; two more intervals pass
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = await client.get("/v1/recorder", params={"cgroup": workload_cgroup.path, "since": str(t0 - 1)},
                            headers=auth)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    conn = data["window"]["tcp_connect"]
    assert conn["counters"]["failed"] == 9 and conn["counters"]["attempts"] == 9
    assert conn["top"]["failed_peers"] == [{"peer": f"127.0.0.1:{bad}", "count": 9}]
    per_interval = [iv["counters"].get("tcp_connect.failed", 0) for iv in data["series"]]
    assert sum(per_interval) == 9 and per_interval.count(0) >= 1, per_interval
    assert data["recorder"]["entries"] > 0 and data["recorder"]["max_intervals"] == 120

    metrics = await client.get("/metrics", headers=auth)
    text = await metrics.text()
    assert metrics.status == 200
    line = [ln for ln in text.splitlines() if ln.startswith("llmslo_recorder_events_total{")
            and 'counter="failed"' in ln and f'cgroup="{workload_cgroup.path}"' in ln]
    assert line and float(line[0].rsplit(" ", 1)[1]) == 9.0, line
    assert "llmslo_recorder_bpf_runs_total" in text


@pytest.mark.parametrize("params, needle", [
    ({"since": "yesterday"}, "since"),
    ({"since": "20", "until": "10"}, "before until"),
    ({"pid": "one"}, "pid"),
    ({"probes": "nope"}, "not kept by the recorder"),
    ({"cgroup": "/no-such-cgroup-llmslo"}, "does not exist"),
    ({"window": "5m"}, "unknown query parameter"),
])
async def test_recorder_queries_are_validated(recording_agent, params, needle):
    _, client = recording_agent
    resp = await client.get("/v1/recorder", params=params, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 400
    assert needle in (await resp.json())["error"]


async def test_recorder_and_metrics_need_the_token(recording_agent):
    _, client = recording_agent
    for path in ("/v1/recorder", "/metrics"):
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers={"Authorization": "Bearer wrong"})).status == 401


async def test_new_egress_peers_and_processes_against_the_baseline(recording_agent, workload_cgroup):
    """Port A is talked to in the baseline and again in the incident; port B only in the
    incident: B is new (first seen after the baseline ended), A is not."""
    agent, _ = recording_agent
    listener_a, listener_b = socket.socket(), socket.socket()
    for s in (listener_a, listener_b):
        s.bind(("127.0.0.1", 0))
        s.listen(64)
    a, b = listener_a.getsockname()[1], listener_b.getsockname()[1]
    try:
        await asyncio.sleep(1.0)
        await connect_from(workload_cgroup, a, 3)
        await asyncio.sleep(3.5)
        baseline_end = time.time()
        await asyncio.sleep(1.2)
        await connect_from(workload_cgroup, a, 2, b, 4)
        await asyncio.sleep(1.5)
        result = await agent.capture(CaptureRequest(target=CaptureTarget(cgroups=[workload_cgroup.path]),
                                                    probes=["tcp_connect"], duration_s=1, baseline_s=4,
                                                    baseline_end=baseline_end))
    finally:
        listener_a.close()
        listener_b.close()
    peers = {p["name"]: p for p in result.new_peers}
    assert f"127.0.0.1:{b}" in peers and f"127.0.0.1:{a}" not in peers, result.new_peers
    assert baseline_end < peers[f"127.0.0.1:{b}"]["first_seen"] <= result.started_at + 1
    # The connecting processes are started the same way in the baseline and in the incident:
    # their executable is not new.
    assert not any("python" in p["name"] for p in result.new_processes), result.new_processes


async def test_preloaded_probes_cost_nothing_until_a_capture_attaches_them():
    agent = CaptureAgent(recorder=False)
    await agent.start()
    await agent.wait_preloaded()
    try:
        assert {"tcp_connect", "runq_latency"} <= set(agent.status()["preloaded"])
        spare: ProbeSession = agent._spares["runq_latency"]
        await asyncio.sleep(0.5)  # context switches happen all the time; none reach the program
        assert spare.cost().bpf_run_count == 0
        result = await agent.capture(CaptureRequest(target=CaptureTarget(pids=[1]), probes=["runq_latency"],
                                                    duration_s=1, baseline_s=0))
        cost = result.incident["runq_latency"].cost
        assert cost.preloaded and cost.bpf_run_count > 0
    finally:
        await agent.stop()
    assert agent.status()["preloaded"] == []


def test_an_interval_over_its_entry_bound_keeps_counters_and_the_largest_entries():
    delta = {("c", 1, "failed"): 3, ("g", 1, "quota"): 2}
    delta |= {("p", 1, "peers", f"10.0.0.{i}:80"): i for i in range(MAX_KEYS_PER_INTERVAL + 10)}
    kept, dropped = _bounded({"tcp_connect": delta}, MAX_KEYS_PER_INTERVAL)
    assert len(kept["tcp_connect"]) == MAX_KEYS_PER_INTERVAL and dropped == 12
    assert ("c", 1, "failed") in kept["tcp_connect"] and ("g", 1, "quota") in kept["tcp_connect"]
    assert ("p", 1, "peers", "10.0.0.0:80") not in kept["tcp_connect"]
    rec = Recorder(probes=[], interval_s=5, history_s=900)
    assert rec.ring.maxlen == 180


def test_the_entry_bound_is_for_all_probes_and_counters_together():
    """Thousands of busy cgroups: counters alone, over several probes, exceed the bound; the
    interval still holds MAX_KEYS_PER_INTERVAL entries, the largest counters first."""
    deltas = {p: {("c", cg, "events"): cg for cg in range(1, 3001)} for p in ("tcp_retrans", "runq_latency", "dns")}
    kept, dropped = _bounded(deltas, MAX_KEYS_PER_INTERVAL)
    assert sum(map(len, kept.values())) == MAX_KEYS_PER_INTERVAL and dropped == 9000 - MAX_KEYS_PER_INTERVAL
    assert all(k[1] > 3000 - MAX_KEYS_PER_INTERVAL // 3 - 1 for d in kept.values() for k in d)


RESOLVE_AND_CONNECT = r"""
import socket, sys
sys.stdin.readline()
host, port = sys.argv[1], int(sys.argv[2])
addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
socket.create_connection(addr, timeout=2).close()
print("done", flush=True)
sys.stdin.readline()
"""


async def test_a_new_peer_is_named_by_the_targets_own_dns_lookup(workload_cgroup):
    """The target resolves api.llmslo.test (a local DNS stand-in) and connects to the answer for
    the first time: the capture lists that peer as new, with the name it was resolved from."""
    from lab.dns import DnsStandin

    agent = CaptureAgent(recorder=True, recorder_interval_s=1.0, recorder_history_s=120, preload=False)
    agent.recorder.probe_names = ["tcp_connect", "dns"]
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    with DnsStandin(addresses=["127.0.0.2"]) as standin:
        await agent.start()
        proc = None
        try:
            await asyncio.sleep(3.0)  # a baseline with no traffic at all
            baseline_end = time.time()
            procs = workload_cgroup.dir / "cgroup.procs"
            proc = subprocess.Popen(
                standin.client_argv([sys.executable, "-c", RESOLVE_AND_CONNECT, "api.llmslo.test", str(port)]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                preexec_fn=lambda: procs.write_text(str(os.getpid())))
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "done"
            await asyncio.sleep(1.5)
            result = await agent.capture(CaptureRequest(target=CaptureTarget(cgroups=[workload_cgroup.path]),
                                                        probes=["tcp_connect"], duration_s=1, baseline_s=2.5,
                                                        baseline_end=baseline_end))
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
            listener.close()
            await agent.stop()
    new = {p["name"]: p for p in result.new_peers}
    assert new[f"127.0.0.2:{port}"]["dns_name"] == "api.llmslo.test", result.new_peers


async def test_the_incident_window_reaches_back_to_the_burns_start(recording_agent, workload_cgroup):
    """Failed connects made after the burn began but before the capture attached are in the
    incident (from the recorder), not lost between the alert and the probes."""
    agent, _ = recording_agent
    bad = closed_port()
    await asyncio.sleep(1.5)
    burn_began = time.time()
    await asyncio.sleep(1.2)  # the recorder's interval holding the onset counts as baseline
    await connect_from(workload_cgroup, bad, 6)
    await asyncio.sleep(2.5)  # over before the capture starts
    result = await agent.capture(CaptureRequest(target=CaptureTarget(cgroups=[workload_cgroup.path]),
                                                probes=["tcp_connect"], duration_s=1, baseline_s=1,
                                                baseline_end=burn_began))
    inc = result.incident["tcp_connect"]
    assert inc.counters["failed"] == 6, (inc.counters, result.baseline_note, result.started_at - burn_began)
    assert inc.window_s > 1.0 + 2.0
    assert {"peer": f"127.0.0.1:{bad}", "count": 6} in inc.top["failed_peers"]
    assert "flight-recorder history before the capture" in result.baseline_note


async def test_a_recorder_capture_answers_at_once_from_history(recording_agent, workload_cgroup):
    """source=recorder attaches nothing and takes no slot: the incident window is the recorder's
    history since the burn began, compared with the baseline before it; a new peer is listed,
    a probe the recorder does not run is reported missing, and its cost is the agent's read."""
    agent, client = recording_agent
    listener, fresh = socket.socket(), socket.socket()
    for s in (listener, fresh):
        s.bind(("127.0.0.1", 0))
        s.listen(64)
    good, new, bad = listener.getsockname()[1], fresh.getsockname()[1], closed_port()
    try:
        await asyncio.sleep(1.5)
        await connect_from(workload_cgroup, good, 3)
        await asyncio.sleep(4.5)  # the recorder's smallest baseline is 5 s
        burn_began = time.time()
        await asyncio.sleep(1.2)
        await connect_from(workload_cgroup, bad, 5, new, 2)
        await asyncio.sleep(1.5)
        for _ in range(agent.max_concurrent):  # every slot taken: a live capture would be refused
            agent._slots.acquire()
        try:
            t0 = time.monotonic()
            result = await agent.capture(CaptureRequest(
                target=CaptureTarget(cgroups=[workload_cgroup.path]), probes=["tcp_connect", "runq_latency"],
                baseline_s=6, baseline_end=burn_began, source="recorder"))
            took = time.monotonic() - t0
        finally:
            for _ in range(agent.max_concurrent):
                agent._slots.release()
    finally:
        listener.close()
        fresh.close()
    assert result.source == "recorder" and result.id.startswith("rec-")
    inc, base = result.incident["tcp_connect"], result.baseline["tcp_connect"]
    assert inc.counters["failed"] == 5 and inc.counters["attempts"] == 7, inc.counters
    assert base.counters.get("attempts") == 3 and not base.counters.get("failed"), base.counters
    assert result.started_at == pytest.approx(burn_began) and result.ended_at > burn_began + 1.5
    assert "does not run runq_latency" in result.incident["runq_latency"].error
    assert [p["name"] for p in result.new_peers] == [f"127.0.0.1:{new}"], (result.new_peers, result.novelty_note)
    assert result.new_peers[0]["count"] == 2
    assert result.cost.bpf_run_count == 0 and result.cost.wall_s < 1.0 and took < 1.0, (result.cost, took)
    # The timeline's data: per interval, from the baseline's start; the failures after the onset.
    after = sum(iv["counters"].get("tcp_connect.failed", 0) for iv in result.series if iv["end"] > burn_began)
    assert after == 5 and result.series[0]["start"] <= burn_began - 5, result.series[:2]

    # Over HTTP: validated like any capture request.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"target": {"cgroups": [workload_cgroup.path]}, "probes": ["tcp_connect"], "source": "recorder"}
    resp = await client.post("/v1/captures", json=body, headers=auth)
    assert resp.status == 400 and "baseline_end: required" in (await resp.json())["error"]
    resp = await client.post("/v1/captures", json=dict(body, source="tape"), headers=auth)
    assert resp.status == 400 and "source:" in (await resp.json())["error"]
    resp = await client.post("/v1/captures", json=dict(body, baseline_end=burn_began), headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["source"] == "recorder"


LOOKUPS = r"""
import socket, sys
for line in sys.stdin:
    for _ in range(int(line)):
        socket.getaddrinfo("localhost", 80)
    print("done", flush=True)
"""


def test_the_recorder_rescans_for_libraries_a_new_workload_brought(workload_cgroup, tmp_path):
    """A process that starts after the recorder with its own copy of libc (another inode, as a
    container's image brings) is not seen by the uprobes attached at start; the re-scan attaches
    to its copy, and its lookups count from then on."""
    import shutil
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copy2(f"/lib/x86_64-linux-gnu/{name}", tmp_path / name)
    rec = Recorder(probes=["dns"], interval_s=0.5, history_s=60, rescan_s=3600)
    rec.start()
    procs = workload_cgroup.dir / "cgroup.procs"
    p = subprocess.Popen([str(tmp_path / "ld-linux-x86-64.so.2"), "--library-path", str(tmp_path), sys.executable,
                          "-c", LOOKUPS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: procs.write_text(str(os.getpid())))
    try:
        def lookups(n: int) -> float:
            t0 = time.time()
            p.stdin.write(f"{n}\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "done"
            time.sleep(1.2)  # two intervals: the counts are in the ring
            r, _ = rec.window("dns", {workload_cgroup.dir.stat().st_ino}, t0 - 0.3, time.time(), min_window_s=0.0)
            return r.counters.get("lookups", 0) if r is not None else 0

        p.stdin.write("0\n")  # started and its libraries mapped
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        assert f"{tmp_path}/libc.so.6" in open(f"/proc/{p.pid}/maps").read()
        assert lookups(5) == 0  # its libc is not the one the recorder probed at start
        notes = rec.rescan()
        assert any(f"{tmp_path}/libc.so.6" in n for n in notes), notes
        assert lookups(7) == 7
        assert rec.rescan() == []  # nothing new
        assert rec.status()["rescans"] == notes
    finally:
        p.kill()
        p.wait()
        rec.stop()
