"""What the agent costs a workload: a loopback HTTP service at a fixed request rate, measured in
one run without the agent, with the flight recorder, and with each deep probe in turn.

    .venv/bin/python -m bench.overhead [--rate 150] [--phase-s 15] [--out bench/results/overhead.json]

The service runs in its own cgroup (each request: a new connection and ~2-3 ms of CPU); the
load generator is a separate process, so this process's CPU time is the agent's. Each deep
probe is captured scoped to the service's cgroup for one phase, the recorder runs unscoped on
the whole node. A baseline is measured first and again last: the difference between the two is
the noise floor of the run, and every ratio should be read against it. BPF run time (kernel
statistics) is the probes' own CPU, charged to whichever thread hit the tracepoint.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time

from bench import write_results
from capture.agent import CaptureAgent
from capture.probes import CATALOG
from capture.recorder import DEFAULT_PROBES, DEFAULT_SAMPLED, SAMPLE_EVERY
from capture.schemas import MAX_CAPTURE_SECONDS, CaptureRequest, CaptureTarget
from lab import cgroups, faults
from lab.harness import REPO, LabService


async def load_phase(url: str, rate: float, seconds: float) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "--url", url, "--rate", str(rate), "--seconds", str(seconds),
        cwd=REPO, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed with exit code {proc.returncode}")
    return json.loads(out)


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def measure(name: str, url: str, rate: float, seconds: float, during=None) -> dict:
    """One phase: load for ``seconds`` while ``during`` (a coroutine factory) runs the agent."""
    c0, w0 = cpu_s(), time.monotonic()
    agent_task = asyncio.create_task(during()) if during else None
    load = await load_phase(url, rate, seconds)
    extra = (await agent_task) if agent_task else {}
    wall = time.monotonic() - w0
    row = {"phase": name, "throughput_rps": load["ok"] / load["seconds"], "errors": load["errors"],
           "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"], "agent_cpu_s": cpu_s() - c0, "wall_s": wall}
    row |= extra
    print(f"  {name:16} {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']:6.2f} ms  "
          f"p99 {row['p99_ms']:7.2f} ms  agent CPU {row['agent_cpu_s']:.2f} s  "
          f"BPF {row.get('bpf_ms', 0):.1f} ms", flush=True)
    return row


async def run(rate: float, phase_s: float, probes: list[str]) -> dict:
    service = LabService("bench")
    await service.start()
    rows = []
    try:
        await load_phase(service.url, rate, 3)  # warm-up: imports, caches, the service's first requests
        rows.append(await measure("baseline", service.url, rate, phase_s))

        recorder_agent = CaptureAgent(recorder=True, preload=False)
        await recorder_agent.start()  # compiles outside the measured phase
        try:
            recorder = recorder_agent.recorder
            assert recorder is not None  # recorder=True
            # Whole sampling cycles: the sampled probes' share of the phase is then their share
            # of the recorder's time, not an accident of where the phase fell in the cycle.
            cycle = recorder.interval_s * recorder.sample_every
            recorder_s = math.ceil(phase_s / cycle) * cycle
            before = recorder.cost()

            async def recorder_cost() -> dict:
                await asyncio.sleep(recorder_s)
                after = recorder.cost()
                ns = sum(after[p]["bpf_run_time_ns"] - before.get(p, {}).get("bpf_run_time_ns", 0) for p in after)
                return {"bpf_ms": ns / 1e6, "probes": sorted(after), "sampled": list(recorder.sampled)}

            rows.append(await measure("recorder", service.url, rate, recorder_s, recorder_cost))
        finally:
            await recorder_agent.stop()

        target = CaptureTarget(cgroups=[service.cgroup.path])
        for name in probes:
            agent = CaptureAgent(recorder=False, preload=False)

            async def capture(agent=agent, name=name) -> dict:
                r = await agent.capture(CaptureRequest(target=target, probes=[name], baseline_s=0,
                                                       duration_s=min(phase_s, MAX_CAPTURE_SECONDS)))
                res = r.incident[name]
                return {"bpf_ms": r.cost.bpf_run_time_ns / 1e6, "bpf_runs": r.cost.bpf_run_count,
                        "events": r.cost.events, "startup_ms": r.cost.startup_ms,
                        "error": res.error, "truncated": res.truncated}

            rows.append(await measure(name, service.url, rate, phase_s, capture))
        rows.append(await measure("baseline_end", service.url, rate, phase_s))
        startup = await preloaded_startup(target, probes)
    finally:
        service.stop()
    base = rows[0]
    for row in rows:
        row["throughput_ratio"] = row["throughput_rps"] / base["throughput_rps"]
        row["p50_ratio"] = row["p50_ms"] / base["p50_ms"]
        row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
        row["agent_cpu_pct"] = 100 * row["agent_cpu_s"] / row["wall_s"]
        row["bpf_cpu_pct"] = 100 * row.get("bpf_ms", 0.0) / 1000 / row["wall_s"]
    for name, row in startup.items():
        row["cold_ms"] = next((r["startup_ms"] for r in rows if r["phase"] == name), None)
    return {"rate_rps": rate, "phase_s": phase_s, "cpus": os.cpu_count(), "kernel": os.uname().release,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows, "startup": startup}


async def preloaded_startup(target: CaptureTarget, probes: list[str]) -> dict:
    """Each probe's capture start-up when the agent preloaded it (compiled and verified at agent
    start), next to the cold start-up its phase above measured."""
    agent = CaptureAgent(recorder=False)
    await agent.start()
    await agent.wait_preloaded()
    out = {}
    try:
        for name in probes:
            r = await agent.capture(CaptureRequest(target=target, probes=[name], baseline_s=0, duration_s=1))
            out[name] = {"preloaded_ms": r.cost.startup_ms, "preloaded": r.incident[name].cost.preloaded}
    finally:
        await agent.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=150.0, help="requests per second (default 150)")
    ap.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase (default 15)")
    ap.add_argument("--probes", default="", help="comma-separated deep probes (default: every BPF probe)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "overhead.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.overhead: loading eBPF programs needs root", file=sys.stderr)
        return 2
    probes = [p for p in args.probes.split(",") if p] or [n for n, p in CATALOG.items() if p.source]
    unknown = [p for p in probes if p not in CATALOG]
    if unknown:
        print(f"bench.overhead: unknown probe(s) {unknown}; known: {list(CATALOG)}", file=sys.stderr)
        return 2
    cgroups.sweep_stale()
    faults.sweep_stale_tables()
    print(f"overhead benchmark: {args.rate:g} req/s, {args.phase_s:g} s per phase, recorder probes "
          f"{[p for p in DEFAULT_PROBES if p in CATALOG]}, sampled one interval in {SAMPLE_EVERY} "
          f"{[p for p in DEFAULT_SAMPLED if p in CATALOG]}", flush=True)
    result = asyncio.run(run(args.rate, args.phase_s, probes))
    print(f"\n{'phase':16} {'throughput':>10} {'p50':>7} {'p99':>7} {'agent CPU':>9} {'BPF CPU':>8}"
          "   (ratios vs baseline; CPU in % of one CPU)")
    for row in result["rows"]:
        print(f"{row['phase']:16} {row['throughput_ratio']:10.4f} {row['p50_ratio']:7.3f} {row['p99_ratio']:7.3f} "
              f"{row['agent_cpu_pct']:8.2f}% {row['bpf_cpu_pct']:7.2f}%")
    print(f"\n{'probe':16} {'start-up cold':>13} {'preloaded':>10}")
    for name, row in result["startup"].items():
        print(f"{name:16} {row['cold_ms'] or 0:10.0f} ms {row['preloaded_ms']:7.1f} ms")
    write_results(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
