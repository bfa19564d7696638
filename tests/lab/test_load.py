"""The lab's one load generator against a loopback server: what it sends, what it counts."""
from __future__ import annotations

import asyncio

from aiohttp import web

from lab.load import LoadGenerator, LoadStats, quantile, run_load
from tests.standins.loopback import LoopbackServer


class Answering(LoopbackServer):
    """Answers every third request 500, the rest 200 with a trace id; records the bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        if len(self.bodies) % 3 == 0:
            return web.Response(status=500)
        return web.Response(text="ok", headers={"x-trace-id": f"t{len(self.bodies)}"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/answer", self.handle)
        return app


async def test_counts_what_was_answered_and_how():
    async with Answering() as server:
        stats, stop = LoadStats(), asyncio.Event()
        task = asyncio.create_task(run_load(f"{server.url}/v1/answer", 40, stop, stats))
        await asyncio.sleep(1.0)
        stop.set()
        await task
    answered = len(server.bodies)
    assert 20 <= answered <= 60  # 40/s for a second, give or take the loop's start and stop
    assert stats.ok + stats.errors == len(stats.samples) <= stats.sent  # one in flight at the stop is dropped
    assert stats.errors == stats.codes[500] and stats.ok == stats.codes[200]
    assert all(b == {"prompt": "hello"} for b in server.bodies)
    assert {s.trace_id for s in stats.samples if s.status == 200} <= {f"t{n}" for n in range(1, answered + 1)}
    summary = stats.summary()
    assert summary["requests"] == len(stats.samples) and summary["latency_s"]["p50"] is not None


async def test_the_rate_changes_while_it_runs_and_zero_pauses():
    async with Answering() as server:
        stats = LoadStats()
        gen = LoadGenerator(f"{server.url}/v1/answer", 0, stats, body=lambda rng: {"question": rng.choice("ab")}, seed=1)
        gen.start()
        await asyncio.sleep(0.5)
        assert stats.sent == 0
        gen.rps = 50
        await asyncio.sleep(0.6)
        await gen.stop()
    assert stats.sent >= 15 and {b["question"] for b in server.bodies} <= {"a", "b"}


def test_quantile_is_nearest_rank():
    assert quantile([], 0.5) is None
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0 and quantile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
