"""Fixed-rate load for the overhead benchmark, in its own process so that the benchmark's
process CPU is the agent's alone. Prints one JSON line: ok, errors, seconds, p50/p99 (ms)."""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from lab.load import LoadStats, run_load


async def main(url: str, rate: float, seconds: float) -> dict:
    stats, stop = LoadStats(), asyncio.Event()
    t0 = time.monotonic()
    task = asyncio.create_task(run_load(url, rate, stop, stats))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    lat = sorted(stats.latencies_ms)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [0.0] * 99
    return {"ok": stats.ok, "errors": stats.errors, "seconds": time.monotonic() - t0,
            "p50_ms": q[49], "p99_ms": q[98], "samples": len(lat)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.url, a.rate, a.seconds))), flush=True)
