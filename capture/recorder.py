"""The flight recorder: cheap probes always on, unscoped, kept as a bounded ring of intervals.

It is how a capture that starts when the alert arrives still has a baseline from *before* the
fault, and how the responder can look at the minutes before an incident after the fault has
stopped. Every ``interval_s`` the recorder reads each probe's per-cgroup cumulative counts and
stores the *difference* from the previous read, so a quiet node stores almost nothing; a window
is the sum of the intervals inside it, restricted to the target's cgroups.

Memory bound: ``history_s / interval_s`` intervals of at most ``MAX_KEYS_PER_INTERVAL`` entries
each, all probes together (the defaults: 180 x 2,048 = 368,640 entries, about ``ENTRY_BYTES``
each, so under 60 MiB in the worst case; a node's real use is served by ``status()`` and
/metrics). An interval with more entries keeps counters and gauges first, then histogram buckets
and peers, the largest first, and says how many it dropped. Cumulative per-cgroup counter totals for /metrics are bounded by
``MAX_SERIES`` (the least recently changed are dropped first).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from capture import procmaps
from capture.probes import CATALOG
from capture.probes.base import RawSnapshot, diff, to_result
from capture.schemas import ProbeResult
from capture.session import ProbeLoadError, ProbeSession

log = logging.getLogger(__name__)

# Always-on by default: the probes whose cost is low enough to leave running on a node (bench/
# measures it). CPU waits always on come from the kernel's own count, PSI (cpu_throttle reads
# cpu.pressure per cgroup), not from tracing every context switch.
DEFAULT_PROBES = ("tcp_retrans", "tcp_reset", "tcp_connect", "dns", "tls_http",
                  "cpu_throttle", "oom_kill", "memory_pressure", "process_exec")
# Sampled by default: too costly to leave on (the per-syscall backend_latency, the per-segment
# tcp_flow, the per-context-switch runq_latency), but a capture's verdict needs their baseline
# (backend latency and sRTT per peer, the run-queue wait histogram).
# Their per-event tracepoints are attached for one interval in every SAMPLE_EVERY (5 s of every
# 30 s at the default interval), so they cost about a sixth of what they would always on; their
# bookkeeping tracepoints (connects, socket owners) stay attached. A window's rates and
# histograms come from the attached intervals only.
DEFAULT_SAMPLED = ("tcp_flow", "backend_latency", "runq_latency")
SAMPLE_EVERY = 6
# How often the uprobe probes (dns, tls_http) look for libc and libssl files they are not on yet:
# a container started since the recorder loaded maps its own image's copies (other inodes), and
# a probe that found none at start (no TLS client yet) is loaded again.
RESCAN_S = 60.0
DEFAULT_HISTORY_S = 900.0
MAX_KEYS_PER_INTERVAL = 2048
MAX_SERIES = 20_000
MAX_RESCAN_NOTES = 20
ENTRY_BYTES = 160  # measured: a key tuple of 3-4 items, an int, and its dict slot


@dataclass
class Interval:
    start: float  # wall clock, Unix seconds
    end: float
    raw: dict[str, RawSnapshot]  # probe name -> counts in (start, end]; gauges: value at end
    dropped: int = 0  # entries left out to honour MAX_KEYS_PER_INTERVAL
    sampled_on: bool = False  # the sampled probes' per-event tracepoints were attached throughout

    @property
    def entries(self) -> int:
        return sum(len(r) for r in self.raw.values())


def _bounded(deltas: dict[str, RawSnapshot], limit: int) -> tuple[dict[str, RawSnapshot], int]:
    """The interval's entries of every probe, at most ``limit`` in all: counters and gauges
    before histogram buckets and peers, the largest values first within each; and how many were
    left out. (Before, each probe had its own limit and every counter was kept whatever the
    count: a node with thousands of busy cgroups could outgrow the stated bound many times.)"""
    total = sum(len(d) for d in deltas.values())
    if total <= limit:
        return deltas, 0
    ranked = sorted(((k[0] not in ("c", "g"), -abs(v), name, k) for name, d in deltas.items() for k, v in d.items()),
                    key=lambda t: t[:2])
    kept: dict[str, RawSnapshot] = {name: {} for name in deltas}
    for _, _, name, k in ranked[:limit]:
        kept[name][k] = deltas[name][k]
    return kept, total - limit


class Recorder:
    def __init__(self, probes: list[str] | tuple[str, ...] | None = None, interval_s: float = 5.0,
                 history_s: float = DEFAULT_HISTORY_S, sampled: list[str] | tuple[str, ...] | None = None,
                 sample_every: int = SAMPLE_EVERY, rescan_s: float = RESCAN_S):
        names = probes if probes is not None else DEFAULT_PROBES
        self.probe_names = [n for n in names if n in CATALOG]
        if sampled is None:  # an explicit list of probes is the whole list
            sampled = DEFAULT_SAMPLED if probes is None else ()
        self.sampled = [n for n in sampled
                        if n in CATALOG and CATALOG[n].sampled_attach and n not in self.probe_names]
        self.probe_names += self.sampled
        self.sample_every = max(1, sample_every)
        self._sampled_on = False
        self._intervals_seen = 0
        self.interval_s = interval_s
        self.history_s = history_s
        self.rescan_every = max(1, round(rescan_s / interval_s))
        self.rescans: list[str] = []  # what the re-scans attached, latest last (at most MAX_RESCAN_NOTES)
        self.ring: deque[Interval] = deque(maxlen=max(1, int(history_s / interval_s)))
        self.sessions: dict[str, ProbeSession] = {}
        self.errors: dict[str, str] = {}
        self.totals: dict[tuple[str, int, str], float] = {}  # (probe, cgroup id, counter) -> since start
        self._changed: dict[tuple[str, int, str], float] = {}
        self._last: dict[str, RawSnapshot] = {}
        self._last_at = 0.0
        self.started_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Called after each interval is stored (the early warning's evaluation), in the recorder's
        # thread; one that raises is logged and the recorder goes on.
        self.listeners: list[Callable[[], None]] = []

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
        self._sampled_on = True  # loaded attached; the first sample() pauses them until their turn
        self.started_at = time.time()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="llmslo-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
                if self._intervals_seen % self.rescan_every == 0:
                    self.rescan()
            except Exception:  # a failed read must not end the recorder
                log.exception("event=recorder_sample_failed")
            for listener in list(self.listeners):
                try:
                    listener()
                except Exception:  # noqa: BLE001 - a listener's bug must not end the recorder
                    log.exception("event=recorder_listener_failed")

    def rescan(self) -> list[str]:
        """Attach the uprobe probes to the libraries that appeared since they loaded, and load
        again those that had nothing to attach to; what was attached, in notes."""
        notes = []
        for name in self.probe_names:
            probe = CATALOG[name]
            if probe.attach_dynamic is None:
                continue
            session = self.sessions.get(name)
            if session is not None:
                notes += [f"{name}: {n}" for n in session.rescan()]
                continue
            if probe.library is not None and not procmaps.find_libraries(None, probe.library):
                continue  # still nothing to attach to: not worth a compile
            session = ProbeSession(probe, None)
            try:
                session.load()
            except ProbeLoadError as e:
                self.errors[name] = str(e)
                continue
            with self._lock:
                self.sessions[name] = session
                self.errors.pop(name, None)
            notes += [f"{name}: loaded: {n}" for n in session.notes]
        for n in notes:
            log.info("event=recorder_rescan %s", n)
        self.rescans = (self.rescans + notes)[-MAX_RESCAN_NOTES:]
        return notes

    def sample(self) -> None:
        """Read every probe and append the interval since the previous read."""
        now = time.time()
        current = {}
        for name, s in list(self.sessions.items()):
            try:
                current[name] = s.read_raw()
            except Exception as e:  # one probe's failure must not stop the others
                self.errors[name] = f"read failed: {e}"
        with self._lock:
            if self._last_at:
                raw, dropped = _bounded({name: diff(self._last.get(name, {}), cur) for name, cur in current.items()},
                                        MAX_KEYS_PER_INTERVAL)
                for name, delta in raw.items():
                    if name not in self.sampled:  # /metrics totals are of what is always on
                        self._add_totals(name, delta, now)
                self.ring.append(Interval(start=self._last_at, end=now, raw=raw, dropped=dropped,
                                          sampled_on=self._sampled_on))
            self._last, self._last_at = current, now
        self._intervals_seen += 1
        self._switch_sampled(self._intervals_seen % self.sample_every == 0)

    def _switch_sampled(self, on: bool) -> None:
        """Attach (or detach) the sampled probes' per-event tracepoints for the next interval."""
        if on == self._sampled_on:
            return
        with self._lock:  # readers see the flag and the attachments agree
            for name in self.sampled:
                session = self.sessions.get(name)
                if session is None:
                    continue
                try:
                    session.resume() if on else session.pause()
                except Exception as e:  # noqa: BLE001 - bcc raises bare Exceptions; the others go on
                    self.errors[name] = f"{'attaching' if on else 'detaching'} failed: {e}"
                    log.error("event=recorder_sampling_failed probe=%s on=%s error=%s", name, on, e)
            self._sampled_on = on

    def _add_totals(self, probe: str, delta: RawSnapshot, now: float) -> None:
        for key, value in delta.items():
            if key[0] == "c":
                k = (probe, key[1], key[2])
                self.totals[k] = self.totals.get(k, 0.0) + value
                self._changed[k] = now
        if len(self.totals) > MAX_SERIES:
            for k in sorted(self._changed, key=self._changed.__getitem__)[:len(self.totals) - MAX_SERIES]:
                self.totals.pop(k, None)
                self._changed.pop(k, None)

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
            return self.ring[0].start, self.ring[-1].end

    def intervals(self, start: float, end: float) -> list[Interval]:
        """The intervals lying inside [start, end], allowing half an interval at either edge."""
        slack = self.interval_s / 2
        with self._lock:
            return [iv for iv in self.ring if iv.start >= start - slack and iv.end <= end + slack]

    def window(self, probe: str, cgroup_ids: set[int] | None, start: float, end: float,
               min_window_s: float = 5.0, until: str = "the capture") -> tuple[ProbeResult | None, str]:
        """The probe's counts for ``cgroup_ids`` (None: the whole node) over the intervals inside
        [start, end]. Returns (result, note); result is None when the ring does not cover at
        least ``min_window_s`` of the asked window. ``until`` names what ``end`` is, for the note."""
        if probe not in self.sessions:
            return None, f"recorder does not run {probe}: {self.errors.get(probe, 'not configured')}"
        ivs = self.intervals(start, end)
        if not ivs:
            return None, "the recorder has no history for that window (it started later)"
        span = ivs[-1].end - ivs[0].start
        if span < min_window_s:
            return None, f"the recorder covers only {span:.0f}s before the incident"
        ago = max(0.0, end - ivs[-1].end)
        note = f"baseline from the recorder, {span:.0f}s ending {ago:.0f}s before {until}"
        if probe in self.sampled:
            ivs = [iv for iv in ivs if iv.sampled_on]
            observed = sum(iv.end - iv.start for iv in ivs)
            if not ivs:
                return None, (f"the recorder samples {probe} one interval in {self.sample_every}, and none fell in "
                              f"the {span:.0f}s before {until}")
            note = (f"baseline from the recorder, sampled: {probe} attached {observed:.0f}s of the {span:.0f}s "
                    f"ending {ago:.0f}s before {until}")
            span = observed
        total = self._summed(probe, ivs)
        return to_result(CATALOG[probe], total, cgroup_ids, span), note

    def raw_window(self, probe: str, start: float, end: float) -> RawSnapshot:
        """The probe's raw counts (every cgroup) summed over the intervals inside [start, end]:
        what a capture's own maps would hold, for the comparisons that need more than a result's
        top lists (a sampled probe: its attached intervals only)."""
        ivs = self.intervals(start, end)
        if probe in self.sampled:
            ivs = [iv for iv in ivs if iv.sampled_on]
        return self._summed(probe, ivs)

    def sums(self, start: float, end: float) -> dict[str, tuple[RawSnapshot, float]]:
        """Every probe's raw counts (every cgroup) summed over the intervals inside [start, end],
        with the seconds they cover (a sampled probe: its attached intervals only, so its rates
        are per second observed); a probe with no interval there covers 0 s."""
        ivs = self.intervals(start, end)
        out = {}
        for probe in list(self.sessions):
            mine = [iv for iv in ivs if iv.sampled_on] if probe in self.sampled else ivs
            out[probe] = (self._summed(probe, mine), sum(iv.end - iv.start for iv in mine))
        return out

    @staticmethod
    def _summed(probe: str, ivs: list[Interval]) -> RawSnapshot:
        total: RawSnapshot = {}
        for iv in ivs:
            for key, value in iv.raw.get(probe, {}).items():
                total[key] = value if key[0] == "g" else total.get(key, 0) + value
        return total

    def first_seen(self, probe: str, top_list: str, cgroup_ids: set[int] | None,
                   start: float, end: float) -> dict[str, float]:
        """For each entry of ``top_list`` (e.g. tcp_connect's peers) seen in [start, end]: the
        end of the first interval it appeared in."""
        seen: dict[str, float] = {}
        for iv in self.intervals(start, end):
            for key in iv.raw.get(probe, {}):
                if key[0] == "p" and key[2] == top_list and (cgroup_ids is None or key[1] in cgroup_ids):
                    seen.setdefault(key[3], iv.end)
        return seen

    def series(self, cgroup_ids: set[int] | None, start: float, end: float,
               probes: list[str] | None = None) -> list[dict]:
        """Per interval, each always-on probe's counters summed over ``cgroup_ids``: the data of a
        chart (a sampled probe's would drop to nothing between its samples)."""
        out = []
        for iv in self.intervals(start, end):
            counters: dict[str, float] = {}
            for probe, raw in iv.raw.items():
                if (probes is not None and probe not in probes) or probe in self.sampled:
                    continue
                for key, value in raw.items():
                    if key[0] == "c" and (cgroup_ids is None or key[1] in cgroup_ids):
                        name = f"{probe}.{key[2]}"
                        counters[name] = counters.get(name, 0) + value
            out.append({"start": round(iv.start, 3), "end": round(iv.end, 3), "counters": counters})
        return out

    def status(self) -> dict:
        with self._lock:
            entries = sum(iv.entries for iv in self.ring)
            dropped = sum(iv.dropped for iv in self.ring)
            cov = (self.ring[0].start, self.ring[-1].end) if self.ring else None
        return {
            "probes": sorted(self.sessions), "errors": dict(self.errors), "interval_s": self.interval_s,
            "sampled": {"probes": [n for n in self.sampled if n in self.sessions], "one_interval_in": self.sample_every,
                        "attached_now": self._sampled_on},
            "history_s": self.history_s, "intervals": len(self.ring), "max_intervals": self.ring.maxlen,
            "covers_s": round(cov[1] - cov[0], 1) if cov else 0.0,
            "covers": [round(cov[0], 3), round(cov[1], 3)] if cov else None,
            "entries": entries, "dropped_entries": dropped, "approx_bytes": entries * ENTRY_BYTES,
            "max_bytes": (self.ring.maxlen or 0) * MAX_KEYS_PER_INTERVAL * ENTRY_BYTES,
            "series": len(self.totals), "rescan_every_s": self.rescan_every * self.interval_s,
            "rescans": list(self.rescans),
        }

    def cost(self) -> dict[str, dict]:
        """What each always-on probe has cost since it loaded (kernel BPF statistics)."""
        return {name: s.cost().__dict__ for name, s in list(self.sessions.items())}
