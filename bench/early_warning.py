"""What the kernel early warning costs the agent per recorder interval: its evaluation (every
workload attributed with the model, anomalies learned and scored) over a synthetic flight
recorder, for a few node sizes, against the recorder's own read of the same intervals (summing a
window, which every capture's baseline does) measured in the same run.

    .venv/bin/python -m bench.early_warning [--out bench/results/early_warning.json]

No kernel needed: the recorder's ring is filled with random per-cgroup counters (the always-on
probes' counter names), 180 intervals of 5 s (its 15 minutes), and the early warning's cgroup
walk is replaced by the workloads' paths.
"""
from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time

from bench import write_results
from capture.early_warning import EarlyWarning
from capture.probes import CATALOG
from capture.recorder import DEFAULT_PROBES, Recorder
from lab.harness import REPO

INTERVAL_S = 5.0
HISTORY = 180  # intervals: 15 minutes
GRID = ((20, 200), (200, 200), (200, 2048))  # (workloads, entries per interval, all probes)
ROUNDS = 12


def interval(rng: random.Random, workloads: int, entries: int) -> dict:
    probes = [p for p in DEFAULT_PROBES if CATALOG[p].counters]
    raw: dict = {p: {} for p in probes}
    for _ in range(entries):
        p = rng.choice(probes)
        raw[p][("c", rng.randint(1, workloads), rng.choice(sorted(CATALOG[p].counters)))] = rng.randint(1, 9)
    return raw


def measure(workloads: int, entries: int, seed: int = 1) -> dict:
    from capture.recorder import Interval

    rng = random.Random(seed)
    rec = Recorder(probes=list(DEFAULT_PROBES), interval_s=INTERVAL_S, history_s=HISTORY * INTERVAL_S)
    rec.sessions = dict.fromkeys(rec.probe_names)  # type: ignore[assignment]  # "running": the reads use the names only
    ew = EarlyWarning(rec, cgroups=("/bench-*",))
    ew._paths, ew._walked_at = {i: f"/bench-{i}" for i in range(1, workloads + 1)}, float("inf")
    t = 1_000_000.0
    for _ in range(HISTORY):
        rec.ring.append(Interval(t, t + INTERVAL_S, interval(rng, workloads, entries)))
        t += INTERVAL_S
    ew.evaluate(t)  # the first evaluation learns every workload's history: not a steady interval
    evals, reads = [], []
    for _ in range(ROUNDS):
        rec.ring.append(Interval(t, t + INTERVAL_S, interval(rng, workloads, entries)))
        t += INTERVAL_S
        c0 = time.thread_time()
        ew.evaluate(t)
        evals.append(time.thread_time() - c0)
        c0 = time.thread_time()
        rec.sums(t - 300, t)  # the baseline a capture of one workload reads
        reads.append(time.thread_time() - c0)
    ev, rd = statistics.median(evals), statistics.median(reads)
    row = {"workloads": workloads, "entries_per_interval": entries, "evaluation_ms": round(ev * 1000, 2),
           "cpu_pct_of_one_cpu": round(100 * ev / INTERVAL_S, 3), "baseline_read_ms": round(rd * 1000, 2),
           "ratio_to_baseline_read": round(ev / rd, 2) if rd else None}
    print(f"  {workloads:4} workloads, {entries:5} entries/interval: {row['evaluation_ms']:7.1f} ms per evaluation "
          f"({row['cpu_pct_of_one_cpu']:.2f}% of one CPU at {INTERVAL_S:g} s), {row['ratio_to_baseline_read']}x one "
          f"5-minute baseline read ({row['baseline_read_ms']:.1f} ms)", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "early_warning.json"))
    args = ap.parse_args()
    logging.getLogger("capture.early_warning").setLevel(logging.ERROR)  # random counts raise warnings: not the point
    print(f"early-warning benchmark: {HISTORY} intervals of {INTERVAL_S:g} s, median of {ROUNDS} evaluations",
          flush=True)
    rows = [measure(w, e) for w, e in GRID]
    write_results({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "interval_s": INTERVAL_S,
                   "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
