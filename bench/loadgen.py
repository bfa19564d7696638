"""Load for the overhead benchmark, in its own process so that the benchmark's process CPU is the
agent's alone: a fixed rate (open loop), or ``--concurrency N`` clients each sending its next
request as soon as the last is answered (closed loop: the service's throughput at saturation).
Every request opens a new connection, as the fixed-rate generator does. Prints one JSON line:
ok, errors, seconds, p50/p99 (ms)."""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp

from lab.load import LoadStats, Sample, run_load


async def closed_loop(url: str, concurrency: int, seconds: float, stats: LoadStats) -> None:
    """``concurrency`` clients back to back until ``seconds`` have passed."""
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        async def client() -> None:
            while time.monotonic() < end:
                at, t = time.time(), time.monotonic()
                status = 0
                try:
                    async with session.post(url, json={"prompt": "hello"}) as r:
                        await r.read()
                        status = r.status
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass
                stats.codes[status] += 1
                stats.samples.append(Sample(at, time.monotonic() - t, status, ""))
        await asyncio.gather(*(client() for _ in range(concurrency)))


async def main(url: str, rate: float, seconds: float, concurrency: int = 0) -> dict:
    stats, stop = LoadStats(), asyncio.Event()
    t0 = time.monotonic()
    if concurrency:
        await closed_loop(url, concurrency, seconds, stats)
    else:
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
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=0, help="closed loop with this many clients (ignores --rate)")
    ap.add_argument("--seconds", type=float, required=True)
    a = ap.parse_args()
    if not a.concurrency and a.rate <= 0:
        ap.error("give --rate R > 0 or --concurrency N")
    print(json.dumps(asyncio.run(main(a.url, a.rate, a.seconds, a.concurrency))), flush=True)
