"""What the agent costs a workload: a loopback HTTP service in its own cgroup, measured in one run
without the agent and with its flight recorder (and early warning) in alternating phases, then
with each deep probe in turn.

    .venv/bin/python -m bench.overhead [--pairs 5] [--phase-s 20] [--rates 150,1000]
                                       [--saturation-s 15] [--probes a,b | --no-probes]

The load generator is a separate process (bench.loadgen), so this process's CPU is the agent's:
its recorder thread, the early warning's evaluations, the reads of the BPF maps. The recorder
runs unscoped on the whole node, as on a real node.

- **Paired phases.** For each load, ``--pairs`` pairs of phases, one without the agent and one
  with the recorder, in alternating order (ABBA: a drift in the machine's speed cancels out rather
  than favouring one side). Each pair gives a ratio (recorder / baseline) of throughput, p50 and
  p99; the result is their mean with a 95% confidence interval (Student's t over the pairs). The
  baselines' own spread is the run's noise floor: the p99 of two agent-free phases differs by
  that much with nothing changed.
- **Loads.** A fixed rate of ~2.5 ms requests (150 req/s: the lab's service), a fixed rate of
  light requests (1,000 req/s: a few hashing rounds each, so the service itself is not the
  bottleneck), and a closed loop of light requests (clients back to back: the node's throughput
  at saturation, where any CPU the agent takes shows as requests not served).
- **Cost.** Per recorder phase: BPF run time of the recorder's probes (kernel statistics; charged
  to whichever thread hit a tracepoint), the agent's CPU, both as a share of one CPU, and BPF
  nanoseconds per request served.
- **Deep probes.** Each BPF probe captured alone, scoped to the service, for one phase at the first
  rate; the start-up of a preloaded probe beside a cold one.

The targets (printed met or missed): the recorder's CPU (BPF and agent) at most 0.25% of one CPU
at 150 req/s and 1% at 1,000 req/s; throughput loss at saturation at most 1%, with a confidence
interval that excludes 2%; the p99 ratio's interval within the noise floor.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from scipy import stats as scistats

from bench import write_results
from capture.agent import CaptureAgent
from capture.probes import CATALOG
from capture.recorder import DEFAULT_PROBES, DEFAULT_SAMPLED, SAMPLE_EVERY
from capture.schemas import MAX_CAPTURE_SECONDS, CaptureRequest, CaptureTarget
from lab import cgroups, faults
from lab.harness import REPO, LabService

# Light requests for the high-rate and saturation loads: a few hashing rounds, so the service's
# own work does not hide what the agent costs per request.
LIGHT_WORK_ROUNDS = 20
# Up to this rate the lab's ~2.5 ms requests leave 2 vCPUs room to spare; above it, light ones.
HEAVY_MAX_RPS = 200.0
# Closed-loop clients: enough to keep the service and the load generator busy on 2 vCPUs.
SATURATION_CLIENTS = 16
TARGETS = {"cpu_pct_150": 0.25, "cpu_pct_1000": 1.0, "saturation_loss_pct": 1.0, "saturation_loss_ci_excludes_pct": 2.0}


async def load_phase(url: str, seconds: float, rate: float = 0.0, concurrency: int = 0) -> dict:
    how = ["--concurrency", str(concurrency)] if concurrency else ["--rate", str(rate)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "--url", url, *how, "--seconds", str(seconds),
        cwd=REPO, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed with exit code {proc.returncode}")
    return json.loads(out)


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def bpf_ns_by_probe(agent: CaptureAgent) -> dict[str, int]:
    assert agent.recorder is not None
    return {name: c["bpf_run_time_ns"] for name, c in agent.recorder.cost().items()}


async def phase(name: str, url: str, seconds: float, rate: float, concurrency: int,
                agent: CaptureAgent | None) -> dict:
    """One phase of load; with ``agent``, its recorder's BPF time and this process's CPU over it."""
    b0, c0, w0 = (bpf_ns_by_probe(agent) if agent else {}), cpu_s(), time.monotonic()
    load = await load_phase(url, seconds, rate, concurrency)
    wall = time.monotonic() - w0
    b1 = bpf_ns_by_probe(agent) if agent else {}
    # Per probe, where the recorder's BPF time goes (a probe sampled one interval in six is off
    # for most of a phase).
    by_probe = {p: round((ns - b0.get(p, 0)) / 1e6, 2) for p, ns in b1.items()}
    row = {"phase": name, "recorder": agent is not None, "throughput_rps": load["ok"] / load["seconds"],
           "ok": load["ok"], "errors": load["errors"], "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"],
           "wall_s": wall, "agent_cpu_s": cpu_s() - c0, "bpf_ms": sum(by_probe.values()),
           "bpf_ms_by_probe": by_probe}
    row["agent_cpu_pct"] = 100 * row["agent_cpu_s"] / wall
    row["bpf_cpu_pct"] = 100 * row["bpf_ms"] / 1000 / wall
    row["cpu_pct"] = row["agent_cpu_pct"] + row["bpf_cpu_pct"]
    row["bpf_ns_per_request"] = row["bpf_ms"] * 1e6 / load["ok"] if load["ok"] else None
    print(f"  {name:22} {row['throughput_rps']:8.1f} req/s  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:7.2f} ms"
          + (f"  BPF {row['bpf_cpu_pct']:.3f}% + agent {row['agent_cpu_pct']:.3f}% of a CPU" if agent else ""),
          flush=True)
    return row


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of ``values`` and its two-sided ``level`` confidence interval (Student's t)."""
    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        return {"mean": m, "lo": None, "hi": None, "n": n}
    half = float(scistats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


async def paired(label: str, url: str, pairs: int, seconds: float, rate: float = 0.0, concurrency: int = 0) -> dict:
    """``pairs`` pairs of phases, baseline and recorder in alternating order; the ratios per pair."""
    print(f"{label}: {pairs} pairs of {seconds:g} s phases", flush=True)
    await load_phase(url, 3, rate, concurrency)  # warm-up: imports, caches, the service's first requests
    rows: list[dict] = []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        pair = {}
        for with_recorder in order:
            if not with_recorder:
                pair["baseline"] = await phase(f"{label} baseline {i + 1}", url, seconds, rate, concurrency, None)
                continue
            agent = CaptureAgent(recorder=True, preload=False)
            await agent.start()  # compiles and loads outside the measured phase
            try:
                assert agent.recorder is not None
                # whole sampling cycles, so the sampled probes' share is their share of the time
                cycle = agent.recorder.interval_s * agent.recorder.sample_every
                pair["recorder"] = await phase(f"{label} recorder {i + 1}", url,
                                               max(cycle, math.ceil(seconds / cycle) * cycle), rate, concurrency, agent)
            finally:
                await agent.stop()
        rows += [pair["baseline"], pair["recorder"]]
    base = [r for r in rows if not r["recorder"]]
    rec = [r for r in rows if r["recorder"]]
    ratios = {k: [r[k] / b[k] for b, r in zip(base, rec) if b[k]] for k in ("throughput_rps", "p50_ms", "p99_ms")}
    # the noise floor: how far apart two agent-free phases' p99 are (consecutive baselines)
    noise = [abs(b2["p99_ms"] / b1["p99_ms"] - 1) for b1, b2 in zip(base, base[1:]) if b1["p99_ms"]]
    return {
        "load": label, "rate_rps": rate or None, "clients": concurrency or None, "phase_s": seconds, "rows": rows,
        "throughput_ratio": mean_ci(ratios["throughput_rps"]), "p50_ratio": mean_ci(ratios["p50_ms"]),
        "p99_ratio": mean_ci(ratios["p99_ms"]),
        "p99_noise_floor": max(noise) if noise else None,
        "cpu_pct": mean_ci([r["cpu_pct"] for r in rec]), "bpf_cpu_pct": mean_ci([r["bpf_cpu_pct"] for r in rec]),
        "agent_cpu_pct": mean_ci([r["agent_cpu_pct"] for r in rec]),
        "bpf_ns_per_request": mean_ci([r["bpf_ns_per_request"] for r in rec if r["bpf_ns_per_request"] is not None]),
    }


def judge(loads: dict[str, dict]) -> list[dict]:
    """The targets, met or missed (None: not measured in this run)."""
    def cpu(label: str, goal: float) -> dict:
        got = loads.get(label, {}).get("cpu_pct", {}).get("mean")
        return {"target": f"recorder CPU at {label} <= {goal:g}% of one CPU", "value": got,
                "met": None if got is None else got <= goal}
    out = [cpu("150 req/s", TARGETS["cpu_pct_150"]), cpu("1000 req/s", TARGETS["cpu_pct_1000"])]
    sat = loads.get("saturation", {}).get("throughput_ratio")
    if sat and sat["lo"] is not None:
        loss, worst = 100 * (1 - sat["mean"]), 100 * (1 - sat["lo"])
        out.append({"target": f"throughput loss at saturation <= {TARGETS['saturation_loss_pct']:g}%, its 95% interval "
                              f"below {TARGETS['saturation_loss_ci_excludes_pct']:g}%", "value": loss, "worst": worst,
                    "met": loss <= TARGETS["saturation_loss_pct"] and worst < TARGETS["saturation_loss_ci_excludes_pct"]})
    for label, res in loads.items():
        p99, noise = res.get("p99_ratio") or {}, res.get("p99_noise_floor")
        if p99.get("lo") is not None and noise is not None:
            out.append({"target": f"p99 at {label} within the run's noise floor (±{100 * noise:.1f}%)",
                        "value": p99["mean"], "interval": [p99["lo"], p99["hi"]],
                        "met": 1 - noise <= p99["lo"] and p99["hi"] <= 1 + noise})
    return out


async def deep_probes(url: str, rate: float, phase_s: float, probes: list[str], cgroup: str) -> list[dict]:
    """Each probe captured alone, scoped to the service, for one phase."""
    target = CaptureTarget(cgroups=[cgroup])
    rows = []
    for name in probes:
        agent = CaptureAgent(recorder=False, preload=False)
        task = asyncio.create_task(agent.capture(CaptureRequest(
            target=target, probes=[name], baseline_s=0, duration_s=min(phase_s, MAX_CAPTURE_SECONDS))))
        c0, w0 = cpu_s(), time.monotonic()
        load = await load_phase(url, phase_s, rate)
        r = await task
        wall = time.monotonic() - w0
        res = r.incident[name]
        row = {"phase": name, "throughput_rps": load["ok"] / load["seconds"], "p50_ms": load["p50_ms"],
               "p99_ms": load["p99_ms"], "agent_cpu_pct": 100 * (cpu_s() - c0) / wall,
               "bpf_ms": r.cost.bpf_run_time_ns / 1e6, "events": r.cost.events, "startup_ms": r.cost.startup_ms,
               "bpf_ns_per_request": r.cost.bpf_run_time_ns / load["ok"] if load["ok"] else None,
               "error": res.error, "truncated": res.truncated}
        print(f"  {name:22} {row['throughput_rps']:8.1f} req/s  p99 {row['p99_ms']:7.2f} ms  BPF {row['bpf_ms']:.1f} ms"
              f"  agent {row['agent_cpu_pct']:.2f}%", flush=True)
        rows.append(row)
    return rows


async def preloaded_startup(target: CaptureTarget, probes: list[str]) -> dict:
    """Each probe's capture start-up when the agent preloaded it (compiled and verified at agent
    start), next to the cold start-up its phase measured."""
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


async def run(pairs: int, phase_s: float, rates: list[float], saturation_s: float, probes: list[str]) -> dict:
    heavy = LabService("bench")
    light = LabService("bench-light", args=("--work-rounds", str(LIGHT_WORK_ROUNDS)))
    await heavy.start()
    await light.start()
    loads: dict[str, dict] = {}
    try:
        for rate in rates:
            # the lab's ~2.5 ms requests up to what 2 vCPUs serve with room to spare, light ones above
            url = heavy.url if rate <= HEAVY_MAX_RPS else light.url
            loads[f"{rate:g} req/s"] = await paired(f"{rate:g} req/s", url, pairs, phase_s, rate=rate)
        if saturation_s > 0:
            loads["saturation"] = await paired("saturation", light.url, pairs, saturation_s,
                                               concurrency=SATURATION_CLIENTS)
        deep, startup = [], {}
        if probes:
            service = heavy if rates[0] <= HEAVY_MAX_RPS else light
            print(f"deep probes, one {phase_s:g} s phase each at {rates[0]:g} req/s", flush=True)
            deep = await deep_probes(service.url, rates[0], phase_s, probes, service.cgroup.path)
            startup = await preloaded_startup(CaptureTarget(cgroups=[heavy.cgroup.path]), probes)
            for name, row in startup.items():
                row["cold_ms"] = next((r["startup_ms"] for r in deep if r["phase"] == name), None)
    finally:
        heavy.stop()
        light.stop()
    return {"pairs": pairs, "phase_s": phase_s, "cpus": os.cpu_count(), "kernel": os.uname().release,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "recorder": {"always_on": [p for p in DEFAULT_PROBES if p in CATALOG],
                         "sampled": [p for p in DEFAULT_SAMPLED if p in CATALOG], "sampled_one_in": SAMPLE_EVERY},
            "loads": loads, "targets": judge(loads), "deep_probes": deep, "startup": startup}


def _ci(c: dict, scale: float = 1.0, digits: int = 3) -> str:
    if c.get("mean") is None:
        return "n/a"
    if c.get("lo") is None:
        return f"{c['mean'] * scale:.{digits}f}"
    return f"{c['mean'] * scale:.{digits}f} [{c['lo'] * scale:.{digits}f}, {c['hi'] * scale:.{digits}f}]"


def print_summary(result: dict) -> None:
    print(f"\n{'load':12} {'throughput':>26} {'p50':>26} {'p99':>26} {'noise':>6}  recorder CPU % of one CPU "
          "(BPF + agent)   BPF ns/request    (ratios vs baseline, 95% intervals)")
    for label, res in result["loads"].items():
        noise = res["p99_noise_floor"]
        print(f"{label:12} {_ci(res['throughput_ratio']):>26} {_ci(res['p50_ratio']):>26} {_ci(res['p99_ratio']):>26} "
              f"{'' if noise is None else f'{100 * noise:5.1f}%'}  {_ci(res['cpu_pct'])} "
              f"({_ci(res['bpf_cpu_pct'])} + {_ci(res['agent_cpu_pct'])})   {_ci(res['bpf_ns_per_request'], digits=0)}")
    print("\ntargets:")
    for t in result["targets"]:
        mark = "met" if t["met"] else "MISSED" if t["met"] is False else "not measured"
        print(f"  {mark:12} {t['target']}: {t['value'] if t['value'] is None else round(t['value'], 4)}")
    if result["deep_probes"]:
        print(f"\n{'probe':16} {'BPF ms':>8} {'ns/request':>11} {'start-up cold':>14} {'preloaded':>10}")
        for row in result["deep_probes"]:
            s = result["startup"].get(row["phase"], {})
            print(f"{row['phase']:16} {row['bpf_ms']:8.1f} {row['bpf_ns_per_request'] or 0:11.0f} "
                  f"{row['startup_ms'] or 0:11.0f} ms {s.get('preloaded_ms') or 0:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=5, help="baseline/recorder pairs per load (default 5)")
    ap.add_argument("--phase-s", type=float, default=20.0, help="seconds per phase (default 20; the recorder's are "
                                                                  "rounded up to whole 30 s sampling cycles)")
    ap.add_argument("--rates", default="150,1000", help="fixed request rates, comma-separated (default 150,1000)")
    ap.add_argument("--saturation-s", type=float, default=15.0, help="seconds per closed-loop phase (0: none)")
    ap.add_argument("--probes", default="", help="comma-separated deep probes (default: every BPF probe)")
    ap.add_argument("--no-probes", action="store_true", help="skip the deep probes")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "overhead.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.overhead: loading eBPF programs needs root", file=sys.stderr)
        return 2
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        print(f"bench.overhead: --rates must be numbers, got {args.rates!r}", file=sys.stderr)
        return 2
    if not rates or any(r <= 0 for r in rates) or args.pairs < 2 or args.phase_s <= 0:
        print("bench.overhead: needs positive rates, --pairs of at least 2 and a positive --phase-s", file=sys.stderr)
        return 2
    probes = [] if args.no_probes else ([p for p in args.probes.split(",") if p]
                                        or [n for n, p in CATALOG.items() if p.source])
    unknown = [p for p in probes if p not in CATALOG]
    if unknown:
        print(f"bench.overhead: unknown probe(s) {unknown}; known: {list(CATALOG)}", file=sys.stderr)
        return 2
    cgroups.sweep_stale()
    faults.sweep_stale_tables()
    print(f"overhead benchmark: recorder probes {[p for p in DEFAULT_PROBES if p in CATALOG]}, sampled one "
          f"interval in {SAMPLE_EVERY} {[p for p in DEFAULT_SAMPLED if p in CATALOG]}", flush=True)
    result = asyncio.run(run(args.pairs, args.phase_s, rates, args.saturation_s, probes))
    print_summary(result)
    write_results(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
