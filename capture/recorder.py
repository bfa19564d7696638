"""The always-on recorder: the probes loaded unscoped, read into a bounded ring of snapshots.

It is how a capture that starts when the alert arrives still has a baseline from *before* the
fault: every ``interval_s`` the recorder copies each probe's per-cgroup cumulative counts, and a
baseline window is the difference of two snapshots, summed over the target's cgroups.
Memory bound: ``history_s / interval_s`` snapshots, each one entry per (cgroup, counter or
histogram bucket or peer) that was non-zero on the node.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from capture.probes import CATALOG
from capture.probes.base import RawSnapshot, diff, to_result
from capture.schemas import ProbeResult
from capture.session import ProbeLoadError, ProbeSession

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    at: float  # wall clock, Unix seconds
    raw: dict[str, RawSnapshot]  # probe name -> cumulative counts


class Recorder:
    def __init__(self, probes: list[str] | None = None, interval_s: float = 5.0, history_s: float = 600.0):
        self.probe_names = probes or list(CATALOG)
        self.interval_s = interval_s
        self.ring: deque[Snapshot] = deque(maxlen=max(2, int(history_s / interval_s) + 1))
        self.sessions: dict[str, ProbeSession] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Load the probes (blocking: compiles) and start sampling in a daemon thread."""
        for name in self.probe_names:
            session = ProbeSession(CATALOG[name], None)
            try:
                session.load()
            except ProbeLoadError as e:
                self.errors[name] = str(e)
                log.error("event=recorder_probe_failed probe=%s error=%s", name, e)
                continue
            self.sessions[name] = session
        self.sample()
        self._thread = threading.Thread(target=self._run, name="llmslo-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a failed read must not end the recorder
                log.exception("event=recorder_sample_failed")

    def sample(self) -> None:
        raw = {name: s.read_raw() for name, s in self.sessions.items()}
        with self._lock:
            self.ring.append(Snapshot(at=time.time(), raw=raw))

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.interval_s + 5)
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()

    def coverage(self) -> tuple[float, float] | None:
        with self._lock:
            if not self.ring:
                return None
            return self.ring[0].at, self.ring[-1].at

    def window(self, probe: str, cgroup_ids: set[int], start: float, end: float,
               min_window_s: float = 5.0) -> tuple[ProbeResult | None, str]:
        """The probe's counts for ``cgroup_ids`` between the snapshots nearest ``start`` and
        ``end`` (inside the ring). Returns (result, note); result is None when the ring does not
        cover at least ``min_window_s`` of the asked window."""
        if probe not in self.sessions:
            return None, f"recorder does not run {probe}: {self.errors.get(probe, 'not configured')}"
        with self._lock:
            snaps = list(self.ring)
        times = [s.at for s in snaps]
        hi = bisect.bisect_right(times, end) - 1  # last snapshot at or before end
        lo = bisect.bisect_left(times, start)  # first snapshot at or after start
        if hi < 0 or lo >= len(snaps) or hi <= lo:
            return None, "the recorder has no history for that window (it started later)"
        a, b = snaps[lo], snaps[hi]
        span = b.at - a.at
        if span < min_window_s:
            return None, f"the recorder covers only {span:.0f}s before the incident"
        result = to_result(CATALOG[probe], diff(a.raw.get(probe, {}), b.raw.get(probe, {})), cgroup_ids, span)
        note = f"baseline from the recorder, {span:.0f}s ending {end - b.at:.0f}s before the capture"
        return result, note
