"""The kernel early warning: every flight-recorder interval, each workload's recent history is
attributed with the attribution model (``capture.attribution.engine.attribute_kernel``: the same
rows, explaining away and decision the responder uses) against the workload's own rolling
baseline, and a domain the model names for long enough raises a warning, exported on /metrics.

Workloads are what a capture is about: a Kubernetes pod (every cgroup of its containers), a
container of another runtime, and on a plain host the cgroups that ``cgroups`` (shell patterns
over cgroup paths) names; other cgroups (system services, the agent itself) are not scored.

Windows: the incident window is the last ``window_s`` (15 s: three recorder intervals), the
baseline the ``baseline_s`` before it. Hysteresis keeps it quiet on noise:

- a domain becomes *pending* when the model names it, and *firing* once it has named it in one
  more evaluation in a row than an interval stays in the window (four at the defaults): a burst
  inside one interval leaves the window before that, so what fires showed in two intervals at
  least, a minimum duration (a fault that shows at once fires about 20 s after its onset);
- while a domain is pending or firing, the workload's baseline is frozen where the trouble began,
  so a fault that lasts does not become its own baseline;
- a change that lasts MAX_FROZEN_S is the workload's new normal (a bigger deployment, a slower
  dependency nobody will fix today): the baseline rolls again, and the warning clears once the
  new level fills it;
- a firing domain clears after CLEAR_AFTER evaluations in a row with its score below
  CLEAR_SCORE, lower than the score that named it (the model names a domain from
  ``MIN_CONFIDENCE`` with a margin over the next).

``traffic`` is scored and exported but never fires: more demand is not a fault (when it burns an
SLO, the page's verdict says so), and a load that changes through the day would otherwise warn
every morning.

Anomalies: what a workload does that it never did before, against all the recorder has seen of it
(NOVELTY: an egress peer it connects to, an executable started in its cgroups). Its first WARM_S
teach what is normal; after that, each interval's new entries are scored by how rare novelty is
for this workload: ``1 / (1 + the earlier intervals with a novelty of that kind in the last
CHURN_WINDOW_S)``, the first FREE_FLAGS of them that were flagged left out (an anomaly does not
make the workload's behaviour normal), so a workload that contacts new addresses all day scores
its next one low, and one that never does scores it 1. A peer is known by its address and by the
name the workload's own lookups gave it, so a provider's rotating addresses are one peer. An entry
scoring at least FLAG_SCORE is flagged, with the DNS name the workload's own lookups gave the
address; it is shown for ANOMALY_TTL_S, and becomes part of the workload's normal either way. A
workload seen for the first time also learns what it is doing right then (its open connections'
peers, its processes' programs): a pool opened before the agent started, which reconnects after a
restart, is not new.

What it costs is measured (CPU seconds of the evaluations) and exported beside the result.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from capture import identity
from capture.attribution.engine import MIN_CONFIDENCE, attribute_kernel
from capture.probes import CATALOG, fdpeers
from capture.probes import dns as dns_probe
from capture.probes.base import RawSnapshot, to_result
from capture.schemas import CaptureResult, CaptureTarget, ProbeResult

if TYPE_CHECKING:
    from capture.recorder import Recorder

log = logging.getLogger(__name__)

# Short, so a fault's counts are not diluted by the healthy seconds before it, yet three
# intervals, so a latency histogram holds the samples its rule asks for.
WINDOW_S = 15.0
# Five minutes: long enough to hold the workload's normal variation (the lab's load moves by a
# few percent between minutes), short enough to follow a daily cycle.
BASELINE_S = 300.0
# A firing domain clears when its score stays below this for CLEAR_AFTER evaluations: under the
# score that names a domain, so a signal hovering at the edge does not flap.
CLEAR_SCORE = MIN_CONFIDENCE - 0.1
CLEAR_AFTER = 3
# Twice the baseline: a warning that outlives this has become the workload's normal.
MAX_FROZEN_S = 2 * BASELINE_S
# Scored, never fired (see the module's docstring).
NOT_WARNED = frozenset({"traffic"})
# At most this many workloads are scored per interval, the busiest first (a bound on its cost).
MAX_WORKLOADS = 200
# (probe, top list, kind): what counts as something new a workload did
NOVELTY = (("tcp_connect", "peers", "egress_peer"), ("process_exec", "executables", "executable"))
# A workload's first five minutes of history teach what it does; nothing is new before that.
WARM_S = BASELINE_S
CHURN_WINDOW_S = 3600.0
# Flagged: no more than one earlier interval with a novelty of the same kind in the last hour.
FLAG_SCORE = 0.5
# An anomaly does not make the workload's behaviour normal: the first two flagged intervals of the
# hour do not count against the next novelty; a third shows a workload that now changes often.
FREE_FLAGS = 2
ANOMALY_TTL_S = 600.0
MAX_ANOMALIES = 20  # per workload, the newest kept
MAX_KNOWN = 5000  # entries remembered per workload and kind, the oldest forgotten first
MAX_SEEDED_PROCESSES = 256  # a new workload's running processes read for what they already do
# The status lists at most this many firing warnings (the metrics and /v1/early-warnings hold all).
MAX_LISTED = 20
# The rolling baseline's sums are recomputed this often (they cover five minutes; a 30 s step
# moves them little and saves summing 60 intervals every 5 s).
BASELINE_REFRESH_S = 30.0
# The cgroup walk that maps cgroup ids to workloads is redone at most this often.
WALK_EVERY_S = 30.0


def shown(anomaly: dict, now: float) -> bool:
    """Whether a scored anomaly is shown now: flagged, and first seen within ANOMALY_TTL_S."""
    return bool(anomaly["flagged"]) and now - anomaly["first_seen"] <= ANOMALY_TTL_S


@dataclass
class Workload:
    key: str  # "pod:<uid>", "container:<id>" or "cgroup:<path>"
    labels: dict[str, str]  # what /metrics and the alert carry: pod_uid, container_id, cgroup
    cgroups: set[int]


@dataclass
class Domain:
    """One domain of one workload that the model named: pending, then firing."""

    name: str
    since: float  # when the model first named it
    began_at: float  # where the trouble began: the start of the window that first named it
    streak: int = 1  # evaluations in a row naming it
    firing_since: float | None = None
    quiet: int = 0  # evaluations in a row under CLEAR_SCORE while firing
    signal: str = ""  # the deciding signal (its strongest supporting evidence) when it fired
    summary: str = ""

    @property
    def firing(self) -> bool:
        return self.firing_since is not None


@dataclass
class _State:
    workload: Workload
    scores: dict[str, float] = field(default_factory=dict)  # domain -> the model's score, latest evaluation
    decision: str = ""
    domains: dict[str, Domain] = field(default_factory=dict)
    baseline: dict[str, ProbeResult] | None = None  # frozen while a domain is pending or firing
    baseline_end: float = 0.0
    settled: bool = False  # the trouble outlived MAX_FROZEN_S: the baseline rolls until it clears
    seen_at: float = 0.0
    # anomalies: what the workload has done (kind -> entry -> first seen), since when it is known,
    # when novelties came (kind -> interval ends), and what was flagged
    known: dict[str, dict[str, float]] = field(default_factory=dict)
    known_since: float = 0.0
    novel_at: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)  # (interval end, flagged)
    anomalies: list[dict] = field(default_factory=list)


def _by_cgroup(sums: dict[str, tuple[RawSnapshot, float]]) -> tuple[dict[int, dict[str, RawSnapshot]],
                                                                    dict[str, float]]:
    """The recorder's sums split by cgroup once (cgroup id -> probe -> its entries), and each
    probe's seconds: a workload's results then read its own entries, not the node's."""
    out: dict[int, dict[str, RawSnapshot]] = {}
    for probe, (raw, _span) in sums.items():
        for key, value in raw.items():
            out.setdefault(key[1], {}).setdefault(probe, {})[key] = value
    return out, {probe: span for probe, (_raw, span) in sums.items()}


def _results(w: Workload, by_cgroup: dict[int, dict[str, RawSnapshot]], spans: dict[str, float]
             ) -> dict[str, ProbeResult]:
    """A workload's probe results (every probe that covered time, zeros where it counted nothing)."""
    out = {}
    for probe, span in spans.items():
        if span <= 0:
            continue
        raw: RawSnapshot = {}
        for cgid in w.cgroups:
            raw.update(by_cgroup.get(cgid, {}).get(probe, {}))  # keys carry the cgroup: none collide
        out[probe] = to_result(CATALOG[probe], raw, None, span)
    return out


def _novelty_by_cgroup(intervals: list) -> dict[int, list[tuple[float, str, str, int]]]:
    """Per cgroup, (interval end, kind, entry, count) for the NOVELTY top lists, in time order."""
    out: dict[int, list[tuple[float, str, str, int]]] = {}
    for iv in intervals:
        for probe, top_list, kind in NOVELTY:
            for key, n in iv.raw.get(probe, {}).items():
                if key[0] == "p" and key[2] == top_list:
                    out.setdefault(key[1], []).append((iv.end, kind, key[3], int(n)))
    return out


class EarlyWarning:
    def __init__(self, recorder: Recorder, window_s: float = WINDOW_S, baseline_s: float = BASELINE_S,
                 cgroups: tuple[str, ...] = (), raise_after: int | None = None, clear_after: int = CLEAR_AFTER,
                 max_workloads: int = MAX_WORKLOADS, warm_s: float = WARM_S) -> None:
        self.recorder = recorder
        self.window_s = window_s
        self.baseline_s = baseline_s
        self.patterns = tuple(cgroups)
        # One evaluation more than an interval stays in the window (see the module's docstring).
        self.raise_after = max(1, raise_after if raise_after is not None
                               else round(window_s / recorder.interval_s) + 1)
        self.clear_after = max(1, clear_after)
        self.max_workloads = max_workloads
        self.warm_s = warm_s
        self.states: dict[str, _State] = {}
        self.evaluations = 0
        self.cpu_s = 0.0
        self.raised = 0  # warnings raised since start
        self._novel_until = 0.0  # the end of the last interval looked at for anomalies
        # the rolling baseline's sums, split by cgroup: (where it ends, by cgroup, spans)
        self._baseline: tuple[float, dict[int, dict[str, RawSnapshot]], dict[str, float]] | None = None
        self.flagged = 0  # anomalies flagged since start
        self._paths: dict[int, str] = {}
        self._walked_at = 0.0
        self._lock = threading.Lock()

    # -- which cgroups are workloads --------------------------------------------------------------

    def _walk(self, now: float) -> dict[int, str]:
        if now - self._walked_at >= WALK_EVERY_S or not self._paths:
            self._paths = {c.id: c.path for c in identity.walk_cgroups("/", limit=10_000)}
            self._walked_at = now
        return self._paths

    def workloads(self, cgids: set[int], now: float) -> list[Workload]:
        """The workloads the counted cgroups belong to (a cgroup unknown to the walk is skipped)."""
        paths = self._walk(now)
        if any(c not in paths for c in cgids) and now - self._walked_at > 1.0:
            self._walked_at = 0.0  # a new cgroup: walk again now
            paths = self._walk(now)
        found: dict[str, Workload] = {}
        for cgid in cgids:
            path = paths.get(cgid)
            if path is None:
                continue
            ident = identity.parse_cgroup_path(path, cgid)
            if ident.pod_uid:
                key, labels = f"pod:{ident.pod_uid}", {"pod_uid": ident.pod_uid}
            elif ident.container_id:
                key, labels = f"container:{ident.container_id}", {"container_id": ident.container_id}
            elif self.patterns and any(fnmatch.fnmatchcase(path, p) for p in self.patterns):
                key, labels = f"cgroup:{path}", {"cgroup": path}
            else:
                continue
            w = found.setdefault(key, Workload(key, labels, set()))
            w.cgroups.add(cgid)
        return list(found.values())

    # -- one evaluation ---------------------------------------------------------------------------

    def evaluate(self, now: float | None = None) -> None:
        """Score every active workload on the recorder's latest history (the recorder calls this
        after each interval)."""
        cpu0 = time.thread_time()
        now = time.time() if now is None else now
        rec = self.recorder
        cov = rec.coverage()
        if cov is None or cov[1] - cov[0] < self.window_s + rec.interval_s:
            return  # not enough history for a window and a baseline yet
        end = cov[1]
        start = end - self.window_s
        incident, spans = _by_cgroup(rec.sums(start, end))
        active = {cgid: sum(abs(v) for raw in probes.values() for k, v in raw.items() if k[0] != "g")
                  for cgid, probes in incident.items()}  # a gauge (a limit) is there whether or not anything happened
        workloads = sorted(self.workloads({c for c, n in active.items() if n}, now),
                           key=lambda w: -sum(active.get(c, 0.0) for c in w.cgroups))[:self.max_workloads]
        if self._baseline is None or start - self._baseline[0] >= BASELINE_REFRESH_S:
            self._baseline = (start, *_by_cgroup(rec.sums(start - self.baseline_s, start)))
        baseline_at, base_by_cg, base_spans = self._baseline
        fresh = _novelty_by_cgroup([iv for iv in rec.intervals(self._novel_until, end) if iv.end > self._novel_until])
        whole: dict[int, list] | None = None  # the whole history's novelty entries, for workloads seen first now
        self._novel_until = end
        with self._lock:
            for w in workloads:
                st = self.states.get(w.key)
                if st is None:
                    if whole is None:
                        whole = _novelty_by_cgroup(rec.intervals(cov[0], end))
                    st = _State(w, known_since=cov[0])
                    self._novelties(st, w, whole, learn_only=True)
                    self._seed_running(st, w)
                else:
                    self._novelties(st, w, fresh, learn_only=False)
                st.workload, st.seen_at = w, now
                if st.baseline is None:
                    baseline, baseline_end = _results(w, base_by_cg, base_spans), baseline_at
                else:
                    baseline, baseline_end = st.baseline, st.baseline_end
                cap = CaptureResult(id=f"ew-{w.key}", node="", target=CaptureTarget(), started_at=start, ended_at=end,
                                    incident=_results(w, incident, spans), baseline=baseline,
                                    cgroup_ids=sorted(w.cgroups), source="recorder",
                                    baseline_note="the workload's own recorder history before the window")
                verdict = attribute_kernel(cap)
                self._update(st, verdict, now, baseline, baseline_end)
                self.states[w.key] = st
            # A workload with nothing counted for a whole history is forgotten.
            for key in [k for k, s in self.states.items() if now - s.seen_at > self.baseline_s + self.window_s]:
                del self.states[key]
        self.evaluations += 1
        self.cpu_s += time.thread_time() - cpu0

    def _novelties(self, st: _State, w: Workload, entries: dict[int, list], learn_only: bool) -> None:
        """Learn what the workload did (``entries``: per cgroup, its novelty entries in time
        order, ``_novelty_by_cgroup``); unless ``learn_only``, score and flag what it had never
        done (see the module's docstring). A peer is known by its address and, when the
        workload's own lookups named that address, by its name: a provider's rotating addresses
        are one peer."""
        mine = sorted((e for c in w.cgroups for e in entries.get(c, ())), key=lambda e: e[0])
        if not mine:
            return
        lookups: dict[str, str] | None = None  # the workload's DNS answers, read once an address is unknown

        def names() -> dict[str, str]:
            nonlocal lookups
            if lookups is None:
                lookups = self._dns_names(w)
            return lookups

        by_interval: dict[tuple[float, str], dict[str, int]] = {}
        for end, kind, item, n in mine:
            known = st.known.setdefault(kind, {})
            if item in known:
                continue
            names_of = [item]
            if kind == "egress_peer":  # an unknown address may still be a known name's
                ip, _, port = item.rpartition(":")
                if name := names().get(ip.strip("[]")):
                    names_of.append(f"{name}:{port}")
            seen = [alias for alias in names_of if alias in known]
            for alias in names_of:
                known.setdefault(alias, end)
            while len(known) > MAX_KNOWN:
                known.pop(next(iter(known)))
            if not seen and not learn_only and end - st.known_since >= self.warm_s:
                new = by_interval.setdefault((end, kind), {})
                new[item] = new.get(item, 0) + n
        found: list[dict] = []
        for (end, kind), new in sorted(by_interval.items()):
            recent = [(t, f) for t, f in st.novel_at.get(kind, []) if end - t <= CHURN_WINDOW_S]
            flagged_before = sum(1 for _, f in recent if f)
            # the workload's own churn: novelties not flagged, and flags beyond the first FREE_FLAGS
            prior = (len(recent) - flagged_before) + max(0, flagged_before - FREE_FLAGS)
            score = round(1.0 / (1.0 + prior), 3)
            st.novel_at[kind] = recent + [(end, score >= FLAG_SCORE)]
            found += [{"kind": kind, "what": item, "first_seen": round(end, 3), "count": n, "score": score,
                       "flagged": score >= FLAG_SCORE} for item, n in sorted(new.items())]
        for anomaly in found:
            if anomaly["kind"] == "egress_peer" and (name := names().get(anomaly["what"].rsplit(":", 1)[0].strip("[]"))):
                anomaly["name"] = name
            if anomaly["flagged"]:
                self.flagged += 1
                log.warning("event=anomaly workload=%s kind=%s what=%s name=%s score=%.2f", w.key, anomaly["kind"],
                            anomaly["what"], anomaly.get("name", ""), anomaly["score"])
        st.anomalies = (st.anomalies + found)[-MAX_ANOMALIES:]

    def _seed_running(self, st: _State, w: Workload) -> None:
        """Learn what the workload is doing now that the recorder could not have seen: the peers
        of its open connections (a pool opened before the agent started reconnects to them after
        a restart) and the programs its processes run (started before the agent)."""
        pids: list[int] = []
        for cgid in w.cgroups:
            path = self._paths.get(cgid)
            if path is None:
                continue
            try:
                pids += [int(p) for p in (identity.cgroup_dir(path) / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                continue
        peers, exes = st.known.setdefault("egress_peer", {}), st.known.setdefault("executable", {})
        for pid in pids[:MAX_SEEDED_PROCESSES]:
            try:
                exes.setdefault(os.readlink(f"/proc/{pid}/exe"), st.known_since)
            except OSError:
                pass
            owned = fdpeers.socket_fds(pid)
            for inode, (family, addr, port) in fdpeers.established_peers(pid).items():
                if inode in owned:
                    ip = ipaddress.ip_address(addr[:4] if family == socket.AF_INET else addr)
                    peers.setdefault(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}", st.known_since)

    def _dns_names(self, w: Workload) -> dict[str, str]:
        """ip -> the host name the workload's own lookups resolved to it, over the recorder's history."""
        cov = self.recorder.coverage()
        if cov is None or "dns" not in self.recorder.sessions:
            return {}
        r, _ = self.recorder.window("dns", w.cgroups, cov[0], cov[1], min_window_s=0.0)
        return dns_probe.names_by_address(r) if r is not None else {}

    def anomalies(self, cgroup_ids: set[int], now: float | None = None) -> list[dict]:
        """The flagged anomalies of the workloads these cgroups belong to, shown for ANOMALY_TTL_S."""
        now = time.time() if now is None else now
        with self._lock:
            return [dict(a, workload=s.workload.key) for s in self.states.values() if s.workload.cgroups & cgroup_ids
                    for a in s.anomalies if shown(a, now)]

    def _update(self, st: _State, verdict, now: float, baseline: dict[str, ProbeResult], baseline_end: float) -> None:
        st.scores = {h.domain: round(h.confidence, 3) for h in verdict.hypotheses}
        st.decision = verdict.decision or verdict.abstain_reason or ""
        named = set(verdict.domains) - NOT_WARNED
        for name in named:
            d = st.domains.get(name)
            if d is None:
                st.domains[name] = d = Domain(name, since=now, began_at=now - self.window_s)
            elif not d.firing:
                d.streak += 1
            if not d.firing and d.streak >= self.raise_after:
                hyp = next(h for h in verdict.hypotheses if h.domain == name)
                top = hyp.supporting[0] if hyp.supporting else None
                d.firing_since, d.quiet = now, 0
                d.signal, d.summary = (top.signal, top.summary) if top else ("", "")
                self.raised += 1
                log.warning("event=early_warning_raised workload=%s domain=%s signal=%s score=%.2f summary=%r",
                            st.workload.key, name, d.signal, st.scores.get(name, 0.0), d.summary)
        for name, d in list(st.domains.items()):
            if d.firing:
                d.quiet = d.quiet + 1 if st.scores.get(name, 0.0) < CLEAR_SCORE else 0
                if d.quiet >= self.clear_after:
                    log.warning("event=early_warning_cleared workload=%s domain=%s after_s=%.0f",
                                st.workload.key, name, now - (d.firing_since or now))
                    del st.domains[name]
            elif name not in named:
                del st.domains[name]  # pending, and no longer named: noise
        if st.domains and st.baseline is None and not st.settled:
            st.baseline, st.baseline_end = baseline, baseline_end  # freeze where the trouble began
        elif st.baseline is not None and now - st.baseline_end > MAX_FROZEN_S:
            st.baseline, st.baseline_end, st.settled = None, 0.0, True  # the new normal: roll again
            log.warning("event=early_warning_rebaselined workload=%s domains=%s", st.workload.key, sorted(st.domains))
        if not st.domains:
            st.baseline, st.baseline_end, st.settled = None, 0.0, False

    # -- what it exports --------------------------------------------------------------------------

    def snapshot(self) -> list[dict]:
        """Per scored workload: its labels, the model's latest scores, and its pending and firing
        domains (what /metrics and the status endpoint show)."""
        with self._lock:
            return [{"workload": s.workload.key, "labels": dict(s.workload.labels), "scores": dict(s.scores),
                     "decision": s.decision, "baseline_frozen_at": s.baseline_end or None,
                     "domains": [{"domain": d.name, "firing": d.firing, "since": round(d.since, 3),
                                  "firing_since": None if d.firing_since is None else round(d.firing_since, 3),
                                  "began_at": round(d.began_at, 3),
                                  "signal": d.signal, "summary": d.summary} for d in s.domains.values()],
                     "anomalies": [dict(a) for a in s.anomalies]}
                    for s in self.states.values()]

    def status(self) -> dict:
        with self._lock:
            firing = [{"workload": s.workload.key, "domain": d.name, "signal": d.signal,
                       "since": round(d.since, 3), "firing_since": round(d.firing_since or 0.0, 3),
                       "began_at": round(d.began_at, 3)}
                      for s in self.states.values() for d in s.domains.values() if d.firing]
            now = time.time()
            recent = [dict(a, workload=s.workload.key) for s in self.states.values() for a in s.anomalies
                      if shown(a, now)]
            return {"window_s": self.window_s, "baseline_s": self.baseline_s, "raise_after": self.raise_after,
                    "clear_after": self.clear_after, "clear_score": CLEAR_SCORE, "cgroups": list(self.patterns),
                    "workloads": len(self.states), "firing": len(firing), "firing_now": firing[:MAX_LISTED],
                    "raised": self.raised, "anomalies_flagged": self.flagged, "anomalies_now": recent[:MAX_LISTED],
                    "evaluations": self.evaluations, "cpu_s": round(self.cpu_s, 3)}
