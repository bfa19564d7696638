"""A fixed-rate client loop against the lab service: a new connection per request, like a
gateway without keep-alive, so both the connect path and the data path are exercised."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadStats:
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


async def run_load(url: str, rate_per_s: float, stop: asyncio.Event, stats: LoadStats,
                   timeout_s: float = 5.0, keep_latencies: bool = False) -> None:
    """Send requests at ``rate_per_s`` until ``stop``; the latest 10,000 latencies are kept
    (all of them with ``keep_latencies``, for a benchmark's quantiles)."""
    interval = 1.0 / rate_per_s
    connector = aiohttp.TCPConnector(force_close=True, limit=50)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        pending: set[asyncio.Task] = set()

        async def one() -> None:
            t0 = time.monotonic()
            try:
                async with s.post(url, json={"prompt": "hello"}) as resp:
                    await resp.read()
                    if resp.status == 200:
                        stats.ok += 1
                    else:
                        stats.errors += 1
            except (TimeoutError, aiohttp.ClientError):
                stats.errors += 1
            stats.latencies_ms.append((time.monotonic() - t0) * 1000)
            if not keep_latencies and len(stats.latencies_ms) > 10_000:
                del stats.latencies_ms[:5_000]

        next_at = time.monotonic()
        while not stop.is_set():
            t = asyncio.create_task(one())
            pending.add(t)
            t.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        for t in list(pending):
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
