"""The responder's own health: whether its store can be written, and whether each of its loops
(workers, the deliverer, the lease keeper, the intake writer) is still making progress.

Nothing here touches the database on a request: ``/healthz`` answers from this state in
microseconds, however busy or stuck the store is. The store's side is kept current by every
operation that succeeds or fails and by a probe (``StoreProbe``) that writes one row every few
seconds while the store is down, so both directions (down, recovered) are seen without traffic.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# A loop that has not reported progress for this long is stuck. Workers report while idle
# (every poll), and a job is cut off at JOB_TIMEOUT_S (responder.app), so only a loop that
# hangs outside any bound goes quiet this long.
DEFAULT_STALL_S = 60.0
# While the store is down, the probe tries a write this often.
PROBE_INTERVAL_S = 1.0
# While the store is up, the probe writes this often anyway, so a disk that fills without any
# traffic is noticed.
PROBE_IDLE_INTERVAL_S = 10.0


@dataclass
class LoopState:
    name: str
    stall_s: float
    last_progress: float = field(default_factory=time.monotonic)
    busy_with: str | None = None  # e.g. "job 12 (inc-…)"
    busy_since: float | None = None
    busy_limit_s: float | None = None  # a task may be busy this long before it counts as stuck
    restarts: int = 0
    last_error: str | None = None

    def stuck(self, now: float) -> str | None:
        if self.busy_since is not None and self.busy_limit_s is not None:
            if now - self.busy_since > self.busy_limit_s:
                return f"busy with {self.busy_with} for {now - self.busy_since:.0f}s"
            return None
        if now - self.last_progress > self.stall_s:
            return f"no progress for {now - self.last_progress:.0f}s"
        return None


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.loops: dict[str, LoopState] = {}
        self.store_down_since: float | None = None  # wall clock
        self.store_error: str | None = None
        self.store_failures = 0

    # -- loops --------------------------------------------------------------------------------
    def loop(self, name: str, stall_s: float = DEFAULT_STALL_S) -> LoopState:
        state = self.loops.get(name)
        if state is None:
            state = self.loops[name] = LoopState(name, stall_s)
        return state

    def progress(self, name: str) -> None:
        self.loop(name).last_progress = self._clock()

    def busy(self, name: str, what: str | None, limit_s: float | None = None) -> None:
        state = self.loop(name)
        now = self._clock()
        state.last_progress = now
        state.busy_with = what
        state.busy_since = now if what is not None else None
        state.busy_limit_s = limit_s if what is not None else None

    # -- store --------------------------------------------------------------------------------
    def store_failed(self, error: BaseException | str) -> None:
        self.store_failures += 1
        if self.store_down_since is None:
            self.store_down_since = time.time()
            log.error("event=store_unavailable error=%s", error)
        self.store_error = str(error)

    def store_ok(self) -> None:
        if self.store_down_since is not None:
            log.info("event=store_recovered down_s=%.1f", time.time() - self.store_down_since)
        self.store_down_since = None
        self.store_error = None

    @property
    def store_up(self) -> bool:
        return self.store_down_since is None

    # -- answers ------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        now = self._clock()
        out = []
        if not self.store_up:
            out.append(f"store: cannot be written since {time.strftime('%H:%M:%S', time.gmtime(self.store_down_since))}"
                       f"Z ({self.store_error})")
        for state in self.loops.values():
            why = state.stuck(now)
            if why:
                out.append(f"{state.name}: stuck, {why}")
        return out

    def details(self) -> dict:
        now = self._clock()
        return {
            "store": {"writable": self.store_up, "down_since": self.store_down_since, "error": self.store_error,
                      "failures": self.store_failures},
            "loops": {s.name: {"last_progress_s_ago": round(now - s.last_progress, 3), "busy_with": s.busy_with,
                               "busy_for_s": None if s.busy_since is None else round(now - s.busy_since, 3),
                               "restarts": s.restarts, "last_error": s.last_error, "stuck": s.stuck(now)}
                      for s in self.loops.values()},
        }


async def supervise(health: Health, name: str, body: Callable[[], Awaitable[object]],
                    stall_s: float = DEFAULT_STALL_S) -> None:
    """Run ``await body()`` for ever. If it ever returns or raises anything but cancellation,
    log it with the loop's name, count a restart and start it again after a short pause: a loop
    of the responder never ends quietly."""
    state = health.loop(name, stall_s)
    pause = 0.5
    while True:
        try:
            await body()
            state.last_error = "returned"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the boundary of every background loop: log, restart, go on
            log.exception("event=loop_crashed loop=%s", name)
            state.last_error = f"{type(e).__name__}: {e}"
        state.restarts += 1
        health.progress(name)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 10.0)


class StoreProbe:
    """Writes the store's heartbeat row: every PROBE_INTERVAL_S while the store is down (so
    recovery is noticed without traffic), every PROBE_IDLE_INTERVAL_S while it is up."""

    def __init__(self, health: Health, write: Callable[[], None], unavailable: tuple[type[BaseException], ...]):
        self.health = health
        self.write = write
        self.unavailable = unavailable

    async def run(self) -> None:
        while True:
            try:
                # Bounded by the store itself (SQLite's busy timeout, PostgreSQL's pool and
                # connect timeouts), so no second probe piles up behind a hung one. The store
                # reports the outcome to the health state itself (StoreBase.watch).
                await asyncio.to_thread(self.write)
            except self.unavailable:
                pass
            self.health.progress("store-probe")
            await asyncio.sleep(PROBE_INTERVAL_S if not self.health.store_up else PROBE_IDLE_INTERVAL_S)
