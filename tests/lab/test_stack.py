"""The lab stack as a whole: it starts, the healthy service answers, Prometheus scrapes it with
the generated SLO rules loaded, the responder receives its spans; and nothing of it outlives the
run, not even a run killed with SIGKILL in the middle of its faults.

Measured numbers (start time, healthy latency and time to first token) are printed with ``-s``."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import faults
from lab.harness import REPO, lab_processes
from lab.stack import PROVIDER_HOST, LabStack
from tests.lab.leftovers import lab_cgroups as _lab_cgroups
from tests.lab.leftovers import lab_dirs as _lab_dirs
from tests.lab.leftovers import lab_namespaces

pytestmark = pytest.mark.lab

HEALTHY_S = 12
LOAD_RPS = 10


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.asyncio
async def test_the_stack_starts_healthy_is_scraped_and_traced(tmp_path):
    me = os.getpid()
    async with LabStack(tmp_path / "stack", load_rps=LOAD_RPS) as stack:
        start_s = stack.start_s
        measure_from = time.time()
        await asyncio.sleep(HEALTHY_S)
        summary = stack.load_stats.summary(since=measure_from)
        assert summary["requests"] >= HEALTHY_S * LOAD_RPS * 0.8
        assert summary["codes"] == {"200": summary["requests"]}, summary

        # Prometheus scrapes the service, labelled with its cgroup, with the SLO rules loaded.
        up = await stack.query('up{job="rag-api"}')
        assert [r["value"][1] for r in up] == ["1"]
        series = await stack.query("llm_requests_total")
        assert series and all(r["metric"]["cgroup"] == stack.service.cgroup_path for r in series)
        assert {r["metric"]["code"] for r in series} == {"200"}
        groups = stack.prometheus.rule_groups()
        assert {"llm-slo-errors", "llm-slo-ttft", "llm-slo-latency"} <= {g["name"] for g in groups}
        assert all(r.get("health") == "ok" for g in groups for r in g["rules"]), "a rule failed to evaluate"
        assert await stack.alerts_firing() == []

        # The responder received the service's spans over OTLP.
        health = await stack.responder.health()
        assert health["spans"]["received_total"] >= summary["requests"] * 3, health["spans"]

        # The paths went where the topology says: across each dependency's namespaces to both
        # proxy routes, resolving the provider's name (to its path's far end) through the lab DNS.
        assert stack.endpoints["provider"][0] == stack.paths["provider"].ns_addr
        stats = await stack.proxy.stats()
        assert stats["provider"]["connections_total"] >= summary["requests"]  # no idle connection is kept
        assert stats["retrieval"]["connections_total"] >= 1 and stats["retrieval"]["bytes_from_target"] > 0
        assert stack.dns.query_count(PROVIDER_HOST) >= summary["requests"]
        assert stack.service.pid in stack.service.cgroups.pids()

        ttft = await stack.ttft_quantiles(HEALTHY_S)
        latency = summary["latency_s"]
        print(f"\nstack start {start_s:.1f}s; healthy at {LOAD_RPS} req/s over {HEALTHY_S}s: "
              f"latency p50 {latency['p50']:.3f}s p99 {latency['p99']:.3f}s (client); "
              f"TTFT p50 {ttft['p50']:.3f}s p99 {ttft['p99']:.3f}s (histogram)")
        scratch = stack.scratch
    # Everything it started is gone.
    assert not scratch.exists()
    assert faults.lab_tables(me) == []
    assert _lab_cgroups(me) == []
    assert lab_processes(me) == {}
    assert _lab_dirs(me) == []
    assert lab_namespaces(me) == []


# A lab run in a child process, with faults of every mechanism that leaves something in the kernel
# or a process behind: nftables tables, busy processes, cgroup limits, the proxy's delay.
CHILD = r"""
import asyncio, json, os, sys
from pathlib import Path
from lab.stack import LabStack

async def main():
    async with LabStack(Path(sys.argv[1]), load_rps=3) as stack:
        for f in ({"kind": "packet_loss", "target": "provider", "percent": 5},
                  {"kind": "connection_reset", "target": "retrieval", "fraction": 0.01},
                  {"kind": "cpu_contention", "workers": 1},
                  {"kind": "cpu_throttle", "cpus": 1.5},
                  {"kind": "memory_pressure", "limit_mb": 512},
                  {"kind": "middlebox_delay", "target": "provider", "delay_ms": 20},
                  {"kind": "network_delay", "target": "retrieval", "delay_ms": 20}):
            await stack.apply(f)
        print(json.dumps({"scratch": str(stack.scratch), "service": stack.service.pid,
                          "postgres": stack.postgres.proc.pid, "provider": stack.provider.proc.pid,
                          "prometheus": stack.prometheus.proc.pid, "responder": stack.responder.proc.pid,
                          "workers": [p.pid for f in stack.faults if getattr(f, "contention", None)
                                      for p in f.contention.procs]}), flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_run_killed_mid_fault_leaves_nothing_after_the_sweep(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "run")], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=open(tmp_path / "child.log", "wb"), text=True)
    try:
        line = child.stdout.readline()  # the stack is up and every fault applied
        assert line, (tmp_path / "child.log").read_text()[-3000:]
        info = json.loads(line)
        owner = child.pid
        tables = faults.lab_tables(owner)
        assert len(tables) == 2, tables
        cgs = _lab_cgroups(owner)
        assert len(cgs) >= 2, cgs  # the unified one, and the v1 cpu / memory ones on hybrid nodes
        marked = lab_processes(owner)
        pids = {info["service"], info["postgres"], info["provider"], info["prometheus"], info["responder"],
                *info["workers"]}
        assert pids <= set(marked), (pids, marked)
        assert Path(info["scratch"]).exists() and _lab_dirs(owner)
        assert len(lab_namespaces(owner)) == 4  # a router and a far namespace per dependency
        os.kill(owner, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # The kernel keeps what a killed process made: rules, cgroups; PostgreSQL runs on.
    assert faults.lab_tables(owner) == tables and _lab_cgroups(owner)
    assert _alive(info["postgres"])
    swept = faults.sweep_stale()
    assert faults.lab_tables(owner) == [], swept
    assert _lab_cgroups(owner) == [], swept
    left = [p for p in set(marked) | pids if _alive(p)]
    assert left == [], (left, swept)
    assert lab_processes(owner) == {}
    assert _lab_dirs(owner) == [], swept
    assert lab_namespaces(owner) == [], swept
    assert not Path(info["scratch"]).exists()
