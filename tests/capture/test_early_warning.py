"""The kernel early warning: the attribution model scores each workload's recorder history against
its own rolling baseline; a domain fires only after the minimum duration, holds its baseline while
it fires, and clears with hysteresis. The first tests feed the recorder's ring by hand (the
model is the real one); the last runs on this machine's kernel: refused connects from a workload
cgroup raise a `network` warning on /metrics and /v1/early-warnings, and it clears afterwards."""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from capture.agent import CaptureAgent
from capture.api import make_app
from capture.early_warning import ANOMALY_TTL_S, BASELINE_S, CLEAR_AFTER, MAX_FROZEN_S, EarlyWarning
from capture.recorder import Interval, Recorder
from tests.capture.test_probes import closed_port, spawn_in

POD_UID = "0b1f3c2a-5d7e-4f6a-9b8c-1d2e3f4a5b6c"
POD_PATH = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice"
CONTAINER = POD_PATH + "/cri-containerd-" + "ab" * 32 + ".scope"
OTHER = "/system.slice/cron.service"
CG, CG_OTHER = 101, 202


class Ring:
    """A recorder whose intervals are written by the test, 5 s each, the clock moved by hand."""

    def __init__(self, probes=("tcp_connect",)):
        self.rec = Recorder(probes=list(probes), interval_s=5.0, history_s=900)
        self.rec.sessions = {name: None for name in probes}  # "running": sums() reads these names
        self.now = 1_000_000.0

    def add(self, failed: int = 0, attempts: int = 10, other_failed: int = 0) -> float:
        raw = {("c", CG, "attempts"): attempts + failed, ("c", CG, "failed"): failed,
               ("c", CG_OTHER, "attempts"): 5 + other_failed, ("c", CG_OTHER, "failed"): other_failed}
        if failed:
            raw[("p", CG, "failed_peers", "10.0.0.7:5432")] = failed
        self.rec.ring.append(Interval(start=self.now, end=self.now + 5.0, raw={"tcp_connect": raw}))
        self.now += 5.0
        return self.now


def early(ring: Ring, **kw) -> EarlyWarning:
    ew = EarlyWarning(ring.rec, **kw)
    ew._paths = {CG: CONTAINER, CG_OTHER: OTHER}  # what a walk of the cgroup tree would find
    ew._walked_at = float("inf")
    return ew


def firing(ew: EarlyWarning) -> list[dict]:
    return [d | {"workload": w["workload"]} for w in ew.snapshot() for d in w["domains"] if d["firing"]]


def test_a_fault_fires_after_the_minimum_duration_and_clears_with_hysteresis():
    ring = Ring()
    ew = early(ring)
    assert ew.raise_after == 4  # 15 s window of 5 s intervals, one more
    for _ in range(70):  # six minutes of healthy connects: the baseline
        ew.evaluate(ring.add())
    assert ew.snapshot()[0]["workload"] == f"pod:{POD_UID}" and not firing(ew)
    assert {w["workload"] for w in ew.snapshot()} == {f"pod:{POD_UID}"}  # the cron service is no workload
    fired_after = None
    for i in range(1, 8):  # refused connects, 2 per second
        ew.evaluate(ring.add(failed=10))
        if firing(ew) and fired_after is None:
            fired_after = i
    assert fired_after == 4
    [warning] = firing(ew)
    assert warning["domain"] == "network" and warning["signal"] == "tcp_connect.failures_per_s"
    assert "10.0.0.7:5432" in warning["summary"]
    state = ew.states[f"pod:{POD_UID}"]
    assert state.baseline is not None and state.baseline_end < warning["since"]
    # Still failing nine minutes later: the frozen baseline keeps it firing.
    for _ in range(108):
        ew.evaluate(ring.add(failed=10))
    assert firing(ew)
    # Healthy again: the third evaluation's window is all healthy, the first of CLEAR_AFTER quiet
    # ones in a row that clear it.
    cleared_after = None
    for i in range(1, 12):
        ew.evaluate(ring.add())
        if not firing(ew) and cleared_after is None:
            cleared_after = i
    assert cleared_after == 3 + CLEAR_AFTER - 1
    assert ew.states[f"pod:{POD_UID}"].baseline is None  # rolling again
    assert ew.status()["raised"] == 1


def test_a_change_that_lasts_becomes_the_new_normal_and_clears():
    ring = Ring()
    ew = early(ring)
    for _ in range(70):
        ew.evaluate(ring.add())
    steps = 0
    while not firing(ew):
        ew.evaluate(ring.add(failed=10))
        steps += 1
    began = ring.now
    while firing(ew):
        ew.evaluate(ring.add(failed=10))
        assert ring.now - began < MAX_FROZEN_S + BASELINE_S + 60, "still firing long after the change settled"
    # Cleared once the rolling baseline held the new level; not raised again while it lasts.
    assert ring.now - began >= MAX_FROZEN_S - 60  # the frozen baseline ended just before the change
    for _ in range(100):
        ew.evaluate(ring.add(failed=10))
    assert not firing(ew) and ew.status()["raised"] == 1


def test_a_burst_inside_one_interval_does_not_fire():
    ring = Ring()
    ew = early(ring)
    for _ in range(70):
        ew.evaluate(ring.add())
    ew.evaluate(ring.add(failed=40))  # one bad interval: named while it is in the window
    named = [d for w in ew.snapshot() for d in w["domains"]]
    assert [d["domain"] for d in named] == ["network"] and not named[0]["firing"]
    for _ in range(10):
        ew.evaluate(ring.add())
        assert not firing(ew)
    assert ew.status()["raised"] == 0 and not ew.snapshot()[0]["domains"]


def test_plain_cgroups_are_workloads_only_when_named():
    ring = Ring()
    ew = early(ring, cgroups=("/system.slice/*.service",))
    for _ in range(70):
        ew.evaluate(ring.add())
    assert {w["workload"] for w in ew.snapshot()} == {f"pod:{POD_UID}", f"cgroup:{OTHER}"}
    for _ in range(5):
        ew.evaluate(ring.add(other_failed=10))
    assert [(w["workload"], w["domain"]) for w in firing(ew)] == [(f"cgroup:{OTHER}", "network")]


def test_more_demand_is_scored_but_never_fires():
    ring = Ring(probes=("tcp_connect", "tls_http"))
    ew = early(ring)

    def add(answered: int) -> float:
        end = ring.add()
        ring.rec.ring[-1].raw["tls_http"] = {("c", CG, "status_2xx"): answered, ("c", CG, "responses"): answered}
        return end

    for _ in range(70):
        ew.evaluate(add(25))  # 5 answers a second
    for _ in range(10):
        ew.evaluate(add(75))  # three times the demand
    [w] = ew.snapshot()
    assert w["scores"].get("traffic", 0) > 0.6 and "traffic" in w["decision"]
    assert w["domains"] == [] and ew.status()["raised"] == 0


def test_what_a_workload_never_did_is_flagged_by_how_rare_novelty_is_for_it():
    ring = Ring(probes=("tcp_connect", "process_exec", "dns"))
    ew = early(ring)

    def add(peers=(), exes=(), answers=()) -> float:
        end = ring.add()
        raw = ring.rec.ring[-1].raw
        for p in ("10.0.0.7:5432", *peers):
            raw["tcp_connect"][("p", CG, "peers", p)] = 3
        raw["process_exec"] = {("p", CG, "executables", e): 1 for e in exes}
        raw["dns"] = {("p", CG, "answers", a): 1 for a in answers}
        return end

    for i in range(10):  # a peer seen while the workload is young is learned, not flagged
        ew.evaluate(add(peers=("10.0.0.9:443",) if i == 5 else (), answers=("10.0.0.9 api.provider.example",)))
    for _ in range(60):
        ew.evaluate(add())
    assert ew.anomalies({CG}) == [] and ew.status()["anomalies_flagged"] == 0
    # the provider at another of its addresses, named by the workload's own lookup: the same peer
    ew.evaluate(add(peers=("10.0.0.10:443",), answers=("10.0.0.10 api.provider.example",)))
    assert ew.anomalies({CG}, now=ring.now) == []
    ew.evaluate(add(peers=("203.0.113.9:4444",), answers=("203.0.113.9 sink.rogue.example",)))  # never seen
    [a] = ew.anomalies({CG}, now=ring.now)
    assert (a["kind"], a["what"], a["name"], a["score"], a["workload"]) == (
        "egress_peer", "203.0.113.9:4444", "sink.rogue.example", 1.0, f"pod:{POD_UID}")
    ew.evaluate(add(peers=("203.0.113.9:4444",)))  # the same again: known now
    ew.evaluate(add(exes=("/tmp/.cache/miner",)))  # another kind: scored on its own
    # two more intervals of new peers: an anomaly does not make novelty normal (two flags are free)...
    ew.evaluate(add(peers=("203.0.113.10:4444", "203.0.113.11:4444")))
    ew.evaluate(add(peers=("203.0.113.12:4444",)))
    # ...but a workload flagged three times in the hour now changes often: the next scores lower
    ew.evaluate(add(peers=("203.0.113.13:4444",)))
    ew.evaluate(add(peers=("203.0.113.14:4444",)))
    flagged = [(a["what"], a["score"]) for a in ew.anomalies({CG}, now=ring.now)]
    assert flagged == [("203.0.113.9:4444", 1.0), ("/tmp/.cache/miner", 1.0), ("203.0.113.10:4444", 1.0),
                       ("203.0.113.11:4444", 1.0), ("203.0.113.12:4444", 1.0), ("203.0.113.13:4444", 0.5)]
    assert ew.snapshot()[0]["anomalies"][-1]["score"] == 0.333  # listed, not flagged
    assert ew.anomalies({CG_OTHER}, now=ring.now) == []
    assert ew.anomalies({CG}, now=ring.now + ANOMALY_TTL_S + 10) == []  # shown for ten minutes


def test_no_history_no_evaluation():
    ring = Ring()
    ew = early(ring)
    ew.evaluate(ring.add(failed=10))  # one interval: not even a window yet
    assert ew.snapshot() == [] and ew.evaluations == 0


TOKEN = "early-warning-test-token"

CONNECTS = r"""
import socket, sys, time
ok, bad = int(sys.argv[1]), int(sys.argv[2])
for line in sys.stdin:
    port = bad if line.strip() == "fail" else ok
    for _ in range(5):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            pass
    print("done", flush=True)
"""


@pytest.mark.kernel
async def test_refused_connects_raise_a_network_warning_on_metrics_and_clear(workload_cgroup):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    agent = CaptureAgent(recorder=True, recorder_interval_s=1.0, recorder_history_s=120, preload=False,
                         early_warning=False)
    agent.recorder.probe_names = ["tcp_connect"]
    agent.early_warning = EarlyWarning(agent.recorder, window_s=3.0, baseline_s=20.0,
                                       cgroups=(workload_cgroup.path,))
    agent.recorder.listeners.append(agent.early_warning.evaluate)
    proc = spawn_in(workload_cgroup, "-c", CONNECTS, str(listener.getsockname()[1]), str(closed_port()))
    client = TestClient(TestServer(make_app(agent, TOKEN), host="127.0.0.1"))
    await client.start_server()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def tick(what: str) -> None:
        proc.stdin.write(what + "\n")
        proc.stdin.flush()
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "done"
        await asyncio.sleep(0.5)

    async def warnings() -> list[dict]:
        resp = await client.get("/v1/early-warnings", headers=auth)
        assert resp.status == 200, await resp.text()
        return [d for w in (await resp.json())["workloads"] for d in w["domains"] if d["firing"]]

    try:
        for _ in range(30):  # 15 s of healthy connects
            await tick("ok")
        assert await warnings() == []
        t0 = time.time()
        while not await warnings():
            assert time.time() - t0 < 20, "no early warning 20 s into the refused connects"
            await tick("fail")
        fired_s = time.time() - t0
        [w] = await warnings()
        assert w["domain"] == "network" and w["signal"] == "tcp_connect.failures_per_s", w
        assert fired_s >= 3.0  # not before the minimum duration (four 1 s evaluations)
        text = await (await client.get("/metrics", headers=auth)).text()
        line = [ln for ln in text.splitlines() if ln.startswith("llmslo_early_warning_firing{")]
        assert len(line) == 1 and 'domain="network"' in line[0] and f'cgroup="{workload_cgroup.path}"' in line[0]
        assert "llmslo_early_warning_cpu_seconds_total" in text
        t1 = time.time()
        while await warnings():
            assert time.time() - t1 < 20, "the warning did not clear 20 s after the connects recovered"
            await tick("ok")
        assert agent.early_warning.status()["raised"] == 1
    finally:
        proc.kill()
        proc.wait()
        listener.close()
        await client.close()


WORKLOAD = r"""
import socket, subprocess, sys
for line in sys.stdin:
    cmd, arg = line.split()
    if cmd == "connect":
        socket.create_connection(("127.0.0.1", int(arg)), timeout=2).close()
    else:
        subprocess.run([arg], check=True)
    print("done", flush=True)
"""


@pytest.mark.kernel
async def test_a_new_peer_and_a_new_program_are_flagged_and_reach_the_capture(workload_cgroup, tmp_path):
    """Against the kernel: a workload that connected to one port for its warm-up connects to
    another and runs a program it never ran; both are flagged (on /v1/early-warnings and in a
    recorder capture of the workload); the port it always used is not, nor the one a connection
    opened before the agent started goes to (a pool reconnecting)."""
    known, new, pooled = socket.socket(), socket.socket(), socket.socket()
    for s in (known, new, pooled):
        s.bind(("127.0.0.1", 0))
        s.listen(512)
    holder = spawn_in(workload_cgroup, "-c", "import socket, sys\nc = socket.create_connection(('127.0.0.1', "
                      f"{pooled.getsockname()[1]}))\nprint('open', flush=True)\nsys.stdin.read()")
    assert holder.stdout.readline().strip() == "open"
    program = tmp_path / "never-ran"
    program.write_bytes(Path("/bin/true").read_bytes())
    program.chmod(0o755)
    agent = CaptureAgent(recorder=True, recorder_interval_s=1.0, recorder_history_s=120, preload=False,
                         early_warning=False)
    agent.recorder.probe_names = ["tcp_connect", "process_exec"]
    agent.early_warning = EarlyWarning(agent.recorder, window_s=3.0, baseline_s=20.0, warm_s=6.0,
                                       cgroups=(workload_cgroup.path,))
    agent.recorder.listeners.append(agent.early_warning.evaluate)
    proc = spawn_in(workload_cgroup, "-c", WORKLOAD)
    client = TestClient(TestServer(make_app(agent, TOKEN), host="127.0.0.1"))
    await client.start_server()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def do(cmd: str, arg) -> None:
        proc.stdin.write(f"{cmd} {arg}\n")
        proc.stdin.flush()
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "done"

    async def flagged() -> list[dict]:
        body = await (await client.get("/v1/early-warnings", headers=auth)).json()
        return [a for w in body["workloads"] for a in w["anomalies"] if a["flagged"]]

    try:
        for _ in range(40):  # 10 s of the usual: warm-up, and the known port learned
            await do("connect", known.getsockname()[1])
            await asyncio.sleep(0.25)
        assert await flagged() == []
        await do("connect", pooled.getsockname()[1])  # the pool's peer: open since before the agent
        await do("connect", new.getsockname()[1])
        await do("run", program)
        deadline = time.time() + 10
        while len(got := await flagged()) < 2:
            assert time.time() < deadline, got
            await do("connect", known.getsockname()[1])
            await asyncio.sleep(0.5)
        assert {(a["kind"], a["what"]) for a in got} == {
            ("egress_peer", f"127.0.0.1:{new.getsockname()[1]}"), ("executable", str(program))}
        assert all(a["score"] == 1.0 for a in got)
        req = agent.validate({"target": {"cgroups": [workload_cgroup.path]}, "probes": ["tcp_connect"],
                              "source": "recorder", "baseline_end": time.time() - 5})
        result = await agent.capture(req)
        assert {a["what"] for a in result.anomalies} == {a["what"] for a in got}
    finally:
        for p in (proc, holder):
            p.kill()
            p.wait()
        for s in (known, new, pooled):
            s.close()
        await client.close()
