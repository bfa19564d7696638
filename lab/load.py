"""The lab's one load generator: POSTs at a fixed rate (changeable while it runs), a new
connection per request, like a gateway without keep-alive, so both the connect path and the data
path are exercised. Each answer is kept as a sample (when, how long, which status, the trace id
the service returned) for the runner's windows, the benchmarks' quantiles and the tests' counts.
"""
from __future__ import annotations

import asyncio
import collections
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Requests waiting for an answer beyond which the next one is skipped (and counted), so that a
# stalled service does not pile up thousands of sockets (the lab stack's default).
MAX_IN_FLIGHT = 256
DEFAULT_TIMEOUT_S = 60.0


@dataclass
class Sample:
    at: float  # wall clock (time.time()) when the request was sent
    latency_s: float
    status: int  # HTTP status; 0 = no answer (refused, reset, timeout)
    trace_id: str = ""


@dataclass
class LoadStats:
    """What the load generator saw: counts by status and the most recent samples."""

    sent: int = 0
    skipped: int = 0  # not sent: MAX_IN_FLIGHT requests were already waiting
    codes: collections.Counter = field(default_factory=collections.Counter)
    samples: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200_000))

    @property
    def ok(self) -> int:
        return self.codes[200]

    @property
    def errors(self) -> int:
        """Answered with another status, or not answered at all."""
        return sum(self.codes.values()) - self.codes[200]

    @property
    def latencies_ms(self) -> list[float]:
        return [s.latency_s * 1000 for s in list(self.samples)]

    def window(self, since: float | None = None, until: float | None = None) -> list[Sample]:
        return [s for s in list(self.samples)
                if (since is None or s.at >= since) and (until is None or s.at < until)]

    def summary(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Counts by status and latency quantiles (seconds) of the answered requests in the window."""
        samples = self.window(since, until)
        codes = collections.Counter(str(s.status) for s in samples)
        ok = sorted(s.latency_s for s in samples if s.status == 200)
        return {"requests": len(samples), "codes": dict(codes),
                "ok_ratio": (len(ok) / len(samples)) if samples else None,
                "latency_s": {f"p{q}": quantile(ok, q / 100) for q in (50, 90, 99)}}


def quantile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank quantile of an ascending list; None when it is empty."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


class LoadGenerator:
    """POST ``body(rng)`` to ``url`` at ``rps`` per second (change ``rps`` while it runs; 0 pauses)."""

    def __init__(self, url: str, rps: float, stats: LoadStats, *,
                 body: Callable[[random.Random], Any] = lambda _rng: {"prompt": "hello"},
                 seed: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, max_in_flight: int = MAX_IN_FLIGHT):
        self.url, self.rps, self.stats, self.body = url, float(rps), stats, body
        self.timeout_s, self.max_in_flight = timeout_s, max_in_flight
        self.rng = random.Random(seed)
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lab-load")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=self.max_in_flight)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                next_at = time.monotonic()
                while True:
                    if self.rps > 0:
                        if len(self._pending) >= self.max_in_flight:
                            self.stats.skipped += 1
                        else:
                            t = asyncio.create_task(self._one(session))
                            self._pending.add(t)
                            t.add_done_callback(self._pending.discard)
                        next_at += 1.0 / self.rps
                        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    else:
                        await asyncio.sleep(0.2)
                        next_at = time.monotonic()
            finally:
                for t in list(self._pending):
                    t.cancel()
                await asyncio.gather(*self._pending, return_exceptions=True)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        self.stats.sent += 1
        at, t0 = time.time(), time.monotonic()
        status, trace_id = 0, ""
        try:
            async with session.post(self.url, json=self.body(self.rng)) as r:
                await r.read()
                status, trace_id = r.status, r.headers.get("x-trace-id", "")
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
        self.stats.codes[status] += 1
        self.stats.samples.append(Sample(at, time.monotonic() - t0, status, trace_id))


async def run_load(url: str, rate_per_s: float, stop: asyncio.Event, stats: LoadStats,
                   timeout_s: float = 5.0, max_in_flight: int = 50) -> None:
    """The generator at ``rate_per_s`` until ``stop`` is set. At most ``max_in_flight`` requests
    wait at once (fewer than the stack's generator: the demo and the tests share 2 vCPUs with a
    service that a fault may starve, and the responder must still capture it)."""
    gen = LoadGenerator(url, rate_per_s, stats, timeout_s=timeout_s, max_in_flight=max_in_flight)
    gen.start()
    try:
        await stop.wait()
    finally:
        await gen.stop()
