"""asyncio helpers the long-running loops share.

``asyncio.wait_for`` on Python 3.11 can swallow a cancellation that arrives just as its timeout
fires or its awaitable completes: it returns normally, the cancel request is spent, and a loop
around it (wait for work, or time out and look again) runs on for ever, so a service never
stops. ``asyncio.timeout`` keeps count of cancel requests and lets the outer one through; the
loops use these helpers built on it, and stopping cancels until the task is really done.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s`` seconds; True when it was set."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
        return True
    except TimeoutError:
        return False


async def get_within(queue: asyncio.Queue[T], timeout_s: float) -> T | None:
    """The next item of ``queue``, or None when none came within ``timeout_s`` seconds."""
    try:
        async with asyncio.timeout(timeout_s):
            return await queue.get()
    except TimeoutError:
        return None


async def cancel_all(tasks: Sequence[asyncio.Task], patience_s: float = 10.0) -> None:
    """Cancel ``tasks`` and wait until each is done, cancelling again every quarter second while
    one still runs (a cancel request can be lost), for at most ``patience_s`` seconds."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while pending and loop.time() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.25, max(0.0, deadline - loop.time())))
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: an ended loop was logged where it ended
    if pending:
        log.warning("event=tasks_not_stopped tasks=%s", ",".join(sorted(t.get_name() for t in pending)))
