"""The loops' waiting helpers: a cancel always ends the loop, however it races the wait."""
from __future__ import annotations

import asyncio
import random

from common.aio import cancel_all, get_within, wait_set


async def test_wait_set_and_get_within_say_whether_something_came():
    ev, q = asyncio.Event(), asyncio.Queue()
    assert await wait_set(ev, 0.01) is False and await get_within(q, 0.01) is None
    ev.set()
    q.put_nowait("x")
    assert await wait_set(ev, 1.0) is True and await get_within(q, 1.0) == "x"


async def test_a_loop_of_short_waits_always_stops_when_cancelled():
    """The race that made a responder never stop: the cancel arrives as a wait times out or its
    event is set. Hundreds of cancels at random moments; every loop ends at the first."""
    rng = random.Random(4)
    ev = asyncio.Event()

    async def setter() -> None:
        while True:
            await asyncio.sleep(rng.choice((0, 0.0005, 0.001)))
            ev.set()

    async def loop() -> None:
        while True:
            await wait_set(ev, 0.001)
            ev.clear()

    poke = asyncio.create_task(setter())
    try:
        for _ in range(300):
            task = asyncio.create_task(loop())
            await asyncio.sleep(rng.random() * 0.004)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            assert done, "a cancelled loop kept running"
    finally:
        await cancel_all([poke])


async def test_cancel_all_cancels_again_until_done():
    stubborn_cancels = 0

    async def stubborn() -> None:
        nonlocal stubborn_cancels
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                stubborn_cancels += 1
                if stubborn_cancels >= 3:
                    raise  # lets the third one through, as a lost request would need

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    await cancel_all([task], patience_s=10)
    assert task.cancelled() and stubborn_cancels == 3
