"""The capture agent: runs bounded, scoped captures and answers with results and their cost.

Used in-process by the responder's embedded default and served over HTTP by ``llmslo agent``
(see ``capture.api``). Bounds, whoever asks: duration (schemas.MAX_CAPTURE_SECONDS), concurrent
captures per node (``max_concurrent``), and each probe's event budget; every probe is detached
when its capture ends, fails or is cancelled.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid

from capture import identity, kernelsrc
from capture.early_warning import EarlyWarning
from capture.probes import CATALOG
from capture.probes import dns as dns_probe
from capture.probes.base import RawSnapshot, to_result
from capture.recorder import DEFAULT_HISTORY_S, Recorder
from capture.schemas import CaptureRequest, CaptureResult, ProbeInfo, ProbeResult, RecorderQuery, RequestError
from capture.session import ProbeLoadError, ProbeSession

log = logging.getLogger(__name__)

# At most this many new peers / processes are listed per capture.
MAX_NOVEL = 50

# How often a running capture checks its probes' event budgets and the stop signal.
BUDGET_CHECK_S = 0.5


class AgentBusy(RuntimeError):
    """Too many captures already run on this node; retry later."""


# Resolving a target (cgroup walks, /proc scans, Kubernetes names) may take this long at most.
RESOLVE_TIMEOUT_S = 15.0

# How far back before a capture its incident window reaches into the recorder's history.
LEAD_IN_MAX_S = 300.0


class CaptureAgent:
    def __init__(self, node_name: str | None = None, *, max_concurrent: int = 2,
                 recorder: bool = True, recorder_interval_s: float = 5.0,
                 recorder_history_s: float = DEFAULT_HISTORY_S,
                 event_budgets: dict[str, int] | None = None, preload: bool = True, kube=None,
                 early_warning: bool = True, early_warning_cgroups: tuple[str, ...] = ()):
        self.node = node_name or socket.gethostname()
        # What bcc lacks to compile the probes here (None: nothing), checked once: the node's
        # mounts do not change under a running agent.
        self.kernel_headers = kernelsrc.missing_headers()
        # capture.kube.KubeIdentity, when the agent has a Kubernetes API: pod names, namespaces,
        # workloads and Service names on top of what the cgroup paths say.
        self.kube = kube
        if kube is not None and kube.node is None:
            kube.node = self.node
        self.max_concurrent = max_concurrent
        # Per-probe events/s budgets, tightening (or loosening) the catalog's declared ones.
        self.event_budgets = {name: p.event_budget_per_s for name, p in CATALOG.items()} | (event_budgets or {})
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.recorder = Recorder(interval_s=recorder_interval_s, history_s=recorder_history_s) if recorder else None
        # The kernel early warning scores each workload's recorder history after every interval.
        self.early_warning = None
        if self.recorder is not None and early_warning:
            self.early_warning = EarlyWarning(self.recorder, cgroups=tuple(early_warning_cgroups))
            self.recorder.listeners.append(self.early_warning.evaluate)
        self.active: dict[str, CaptureRequest] = {}
        self.completed = 0
        # Captures whose probes are attached and counting (their window has started).
        self.armed: set[str] = set()
        # Spare sessions, compiled and verified but not attached, one per BPF probe, so that a
        # capture's start-up is attaching (milliseconds) rather than compiling (about a second
        # per probe). Filled by start() and again after each capture that used them.
        self.preload = preload
        self._spares: dict[str, ProbeSession] = {}
        self._spares_lock = threading.Lock()
        self._refilling = threading.Lock()
        self._stopped = False
        self._preloading: threading.Thread | None = None  # set by start(): spares are kept

    async def start(self) -> None:
        if self.recorder:
            await asyncio.to_thread(self.recorder.start)
        if self.preload:
            # In the background: the agent answers (and captures, compiling on demand) at once.
            self._preloading = threading.Thread(target=self._refill, name="llmslo-preload", daemon=True)
            self._preloading.start()

    async def wait_preloaded(self) -> None:
        """Wait until the start-up preload has prepared every probe it can."""
        if self._preloading is not None:
            await asyncio.to_thread(self._preloading.join)

    async def stop(self) -> None:
        self._stopped = True
        if self.recorder:
            await asyncio.to_thread(self.recorder.stop)
        await asyncio.to_thread(self._drain_spares)

    def _drain_spares(self) -> None:
        with self._refilling:  # waits for a refill in progress: no compile outlives the agent
            self._close_spares()

    def _refill(self) -> None:
        """Prepare a spare session for every BPF probe that has none (blocking: compiles)."""
        with self._refilling:
            for name, probe in CATALOG.items():
                if probe.source is None or name in self._spares or self._stopped:
                    continue
                session = ProbeSession(probe, None)
                try:
                    session.prepare()
                except ProbeLoadError as e:
                    log.error("event=preload_failed probe=%s error=%s", name, e)
                    continue
                with self._spares_lock:
                    self._spares[name] = session

    def _close_spares(self) -> None:
        with self._spares_lock:
            spares, self._spares = list(self._spares.values()), {}
        for session in spares:
            session.close()

    def _open_session(self, name: str, scope: identity.ResolvedTarget) -> ProbeSession:
        """A loaded, scoped, armed and attached session: a spare when one is ready."""
        with self._spares_lock:
            spare = self._spares.pop(name, None)
        if spare is not None:
            spare.preloaded = True
            spare.activate(scope)
            return spare
        session = ProbeSession(CATALOG[name], scope)
        session.load()
        return session

    def probes(self) -> list[ProbeInfo]:
        return [p.info() for p in CATALOG.values()]

    def validate(self, data: dict) -> CaptureRequest:
        return CaptureRequest.from_dict(data, known_probes=list(CATALOG))

    async def capture(self, req: CaptureRequest) -> CaptureResult:
        """Run one capture. Raises RequestError (bad target) or AgentBusy before touching the
        kernel; probe failures are reported inside the result, not raised."""
        unknown = [p for p in req.probes if p not in CATALOG]
        if unknown:
            raise RequestError(f"probes: unknown probe(s) {unknown}; known: {sorted(CATALOG)}")
        if req.source == "recorder":
            return await self._from_recorder(req)
        # The slot first: a node that is already capturing refuses at once, before any /proc or
        # cgroup walk is spent on a request it cannot run.
        if not self._slots.acquire(blocking=False):
            raise AgentBusy(f"{self.max_concurrent} captures already running on {self.node}")
        try:
            scope = await self._resolve(req)
        except BaseException:
            self._slots.release()
            raise
        stop = threading.Event()
        cap_id = "cap-" + uuid.uuid4().hex[:10]
        self.active[cap_id] = req
        worker = asyncio.ensure_future(asyncio.to_thread(self._run_blocking, cap_id, req, scope, stop))
        try:
            result, raws = await asyncio.shield(worker)
        except asyncio.CancelledError:
            # The caller gave up: stop early, but wait for the worker so every probe detaches.
            stop.set()
            await asyncio.wait_for(asyncio.shield(worker), timeout=30)
            raise
        finally:
            self.active.pop(cap_id, None)
            self.armed.discard(cap_id)
            self._slots.release()
            if self._preloading is not None and not self._stopped:
                threading.Thread(target=self._refill, name="llmslo-preload", daemon=True).start()
        self.completed += 1
        self._add_baseline(result, req, scope)
        self._add_lead_in(result, req, scope)
        self._add_series(result, req, scope)
        await asyncio.to_thread(self._add_novelty, result, req, scope, raws)  # may ask the Kubernetes API
        self._add_anomalies(result, scope)
        return result

    async def _resolve(self, req: CaptureRequest) -> identity.ResolvedTarget:
        """The target's cgroups, processes and workload names, within RESOLVE_TIMEOUT_S."""
        try:
            scope = await asyncio.wait_for(asyncio.to_thread(identity.resolve, req.target),
                                           timeout=RESOLVE_TIMEOUT_S)
            if self.kube is not None:
                scope.workloads = await asyncio.wait_for(
                    asyncio.to_thread(lambda: [self.kube.enrich(w) for w in scope.workloads]), timeout=RESOLVE_TIMEOUT_S)
                if self.kube.error:
                    scope.notes.append(f"workload names unavailable: {self.kube.error}")
        except TimeoutError:
            raise RequestError(f"target: resolving it took longer than {RESOLVE_TIMEOUT_S:g} s") from None
        return scope

    async def _from_recorder(self, req: CaptureRequest) -> CaptureResult:
        """A capture answered from the flight recorder's history alone: the incident window runs
        from ``baseline_end`` (where the burn began; at most LEAD_IN_MAX_S back) to the recorder's
        latest interval, the baseline is the usual one before it. Nothing is attached, so it
        takes no capture slot and answers in milliseconds; a probe the recorder does not run is
        reported as missing, not started."""
        if self.recorder is None:
            raise RequestError("source: this agent runs without its flight recorder; ask for a live capture")
        scope = await self._resolve(req)
        result, raws = await asyncio.to_thread(self._read_recorder, req, scope)
        self._add_baseline(result, req, scope)
        self._add_series(result, req, scope)
        await asyncio.to_thread(self._add_novelty, result, req, scope, raws)
        self._add_anomalies(result, scope)
        return result

    def _read_recorder(self, req: CaptureRequest, scope: identity.ResolvedTarget
                       ) -> tuple[CaptureResult, dict[str, RawSnapshot]]:
        cpu0, wall0 = time.thread_time(), time.monotonic()
        rec = self.recorder
        assert rec is not None and req.baseline_end is not None  # _from_recorder and the schema checked
        now = time.time()
        start = min(max(req.baseline_end, now - LEAD_IN_MAX_S), now)
        cov = rec.coverage()
        result = CaptureResult(id="rec-" + uuid.uuid4().hex[:10], node=self.node, target=req.target, started_at=start,
                               ended_at=max(start, min(now, cov[1])) if cov else start,
                               cgroup_ids=sorted(scope.cgroup_ids), workloads=scope.workloads,
                               processes=scope.processes, errors=list(scope.notes), source="recorder")
        raws: dict[str, RawSnapshot] = {}
        cgids = scope.baseline_cgroups
        for name in req.probes:
            if not cgids:
                why = "the target's processes live in the root cgroup, whose history is the whole node's"
            elif name not in rec.sessions:
                why = f"the flight recorder does not run {name}"
            else:
                r, note = rec.window(name, cgids, start, now, min_window_s=min(rec.interval_s, now - start))
                if r is not None:
                    result.incident[name] = r
                    raws[name] = {k: v for k, v in rec.raw_window(name, start, now).items() if k[1] in cgids}
                    continue
                why = f"no flight-recorder history since the burn began: {note}"
            result.incident[name] = ProbeResult(probe=name, window_s=0.0, error=why)
        result.cost.agent_cpu_s = round(time.thread_time() - cpu0, 3)
        result.cost.wall_s = round(time.monotonic() - wall0, 3)
        return result, raws

    def _run_blocking(self, cap_id: str, req: CaptureRequest, scope: identity.ResolvedTarget,
                      stop: threading.Event) -> tuple[CaptureResult, dict[str, RawSnapshot]]:
        cpu0 = time.thread_time()
        wall0 = time.monotonic()
        result = CaptureResult(id=cap_id, node=self.node, target=req.target, started_at=time.time(),
                               ended_at=0.0, cgroup_ids=sorted(scope.cgroup_ids), workloads=scope.workloads,
                               processes=scope.processes, errors=list(scope.notes))
        sessions: dict[str, ProbeSession] = {}
        raws: dict[str, RawSnapshot] = {}  # each probe's full counts (results keep only the top N)
        try:
            for name in req.probes:
                try:
                    s = self._open_session(name, scope)
                except ProbeLoadError as e:
                    result.incident[name] = ProbeResult(probe=name, window_s=0.0, error=str(e))
                    result.errors.append(str(e))
                    continue
                sessions[name] = s
            result.cost.startup_ms = (time.monotonic() - wall0) * 1000
            t0 = time.monotonic()
            result.started_at = time.time()
            self.armed.add(cap_id)
            deadline = t0 + req.duration_s
            while sessions and not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                stop.wait(min(BUDGET_CHECK_S, remaining))
                elapsed = max(time.monotonic() - t0, 1e-3)
                for name, s in list(sessions.items()):
                    events = s.stats().events
                    budget = self.event_budgets[name]
                    if events > budget * max(elapsed, 1.0):
                        why = f"stopped after {elapsed:.1f}s: {events} events exceeded the budget of {budget}/s"
                        result.incident[name], raws[name] = self._finish(s, elapsed, truncated=why)
                        del sessions[name]
            elapsed = time.monotonic() - t0
            if stop.is_set():
                result.errors.append(f"capture cancelled after {elapsed:.1f}s")
            for name, s in list(sessions.items()):
                result.incident[name], raws[name] = self._finish(s, elapsed)
                del sessions[name]
        finally:
            for s in sessions.values():
                s.close()
        result.ended_at = time.time()
        for r in result.incident.values():
            result.cost.bpf_run_time_ns += r.cost.bpf_run_time_ns
            result.cost.bpf_run_count += r.cost.bpf_run_count
            result.cost.events += r.events
            result.cost.lost += r.lost
        result.cost.agent_cpu_s = round(time.thread_time() - cpu0, 3)
        result.cost.wall_s = round(time.monotonic() - wall0, 3)
        return result, raws

    @staticmethod
    def _finish(s: ProbeSession, window_s: float, truncated: str | None = None) -> tuple[ProbeResult, RawSnapshot]:
        """Read a session's maps, stats and cost, then detach it."""
        try:
            raw = s.read_raw()
            stats = s.stats()
            cost = s.cost()
        finally:
            s.close()
        r = to_result(s.probe, raw, None, window_s, per_cgroup=True)
        r.events, r.lost, r.truncated, r.cost = stats.events, stats.lost, truncated, cost
        r.notes = list(s.notes)
        if stats.unattributed:
            r.counters["unattributed_events"] = float(stats.unattributed)
        return r, raw

    def _add_baseline(self, result: CaptureResult, req: CaptureRequest, scope: identity.ResolvedTarget) -> None:
        if req.baseline_s <= 0:
            result.baseline_note = "no baseline asked for"
            return
        if self.recorder is None:
            result.baseline_note = "no baseline: this agent runs without its recorder"
            return
        if not scope.baseline_cgroups:
            result.baseline_note = ("no baseline: the target's processes live in the root cgroup, whose "
                                    "history is the whole node's")
            return
        end = min(req.baseline_end or result.started_at, result.started_at)
        until = "the burn began" if end < result.started_at else "the capture"
        notes = []
        for name in req.probes:
            base, note = self.recorder.window(name, scope.baseline_cgroups, end - req.baseline_s, end, until=until)
            if base is not None:
                result.baseline[name] = base
            notes.append(f"{name}: {note}")
        result.baseline_note = "; ".join(dict.fromkeys(n.split(": ", 1)[1] for n in notes)) if notes else ""

    def _add_series(self, result: CaptureResult, req: CaptureRequest, scope: identity.ResolvedTarget) -> None:
        """The recorder's per-interval counters of the asked probes for the target, from the
        baseline's start to the capture's end (at most LEAD_IN_MAX_S before the capture plus the
        baseline): what a timeline of the incident draws."""
        if self.recorder is None or not scope.baseline_cgroups:
            return
        end = min(req.baseline_end or result.started_at, result.started_at)
        start = max(end, result.started_at - LEAD_IN_MAX_S) - req.baseline_s
        series = self.recorder.series(scope.baseline_cgroups, start, result.ended_at, list(req.probes))
        result.series = [{"start": iv["start"], "end": iv["end"],
                          "counters": {k: round(v, 3) for k, v in iv["counters"].items()}} for iv in series]

    def _add_lead_in(self, result: CaptureResult, req: CaptureRequest, scope: identity.ResolvedTarget) -> None:
        """Fold the recorder's history from the burn's start to the capture's start into the
        incident window. An alert arrives well after its burn began, and what happened in between
        (an OOM kill, a burst of failed connects) may be over by the time probes attach; the
        recorder saw it. Only probes the recorder runs always (not those it samples), at most
        LEAD_IN_MAX_S back."""
        if self.recorder is None or not scope.baseline_cgroups or req.baseline_end is None:
            return
        start = max(req.baseline_end, result.started_at - LEAD_IN_MAX_S)
        if result.started_at - start < self.recorder.interval_s:
            return
        folded = []
        for name, live in result.incident.items():
            if live.error or name not in self.recorder.sessions or name in self.recorder.sampled:
                continue  # a sampled probe's history has gaps: it would dilute the capture's rates
            lead, _ = self.recorder.window(name, scope.baseline_cgroups, start, result.started_at,
                                           min_window_s=self.recorder.interval_s)
            if lead is not None:
                result.incident[name] = live.merged_with(lead)
                folded.append(name)
        if folded:
            note = (f"incident window includes {result.started_at - start:.0f}s of flight-recorder history before "
                    f"the capture (since the burn began) for {', '.join(folded)}")
            result.baseline_note = "; ".join(n for n in (result.baseline_note, note) if n)

    def _add_novelty(self, result: CaptureResult, req: CaptureRequest, scope: identity.ResolvedTarget,
                     raws: dict[str, RawSnapshot]) -> None:
        """What the target did in the incident that it did not do in the baseline: egress peers
        it connected to (tcp_connect) and executables it started (process_exec), each with the
        time it was first seen (the recorder's interval end, or the capture's start)."""
        if self.recorder is None or not scope.baseline_cgroups or req.baseline_s <= 0:
            result.novelty_note = "no baseline to compare with"
            return
        cgids = scope.baseline_cgroups
        end = min(req.baseline_end or result.started_at, result.started_at)
        notes = []
        cov = self.recorder.coverage()
        for probe, top_list, field_name in (("tcp_connect", "peers", "new_peers"),
                                            ("process_exec", "executables", "new_processes")):
            if probe not in self.recorder.sessions:
                notes.append(f"the recorder does not run {probe}")
                continue
            if cov is None or cov[0] > end - req.baseline_s + self.recorder.interval_s:
                notes.append(f"{probe}: the recorder's history does not cover the baseline")
                continue
            before = self.recorder.first_seen(probe, top_list, cgids, end - req.baseline_s, end)
            after = self.recorder.first_seen(probe, top_list, cgids, end, result.ended_at)
            counts: dict[str, int] = {}
            for key, n in raws.get(probe, {}).items():
                if key[0] == "p" and key[2] == top_list:
                    counts[key[3]] = counts.get(key[3], 0) + int(n)  # a count: only gauges are fractional
                    after.setdefault(key[3], result.started_at)
            new = [{"name": item, "first_seen": round(at, 3), "count": counts.get(item, 0)}
                   for item, at in sorted(after.items(), key=lambda kv: kv[1]) if item not in before]
            setattr(result, field_name, new[:MAX_NOVEL])
        names = self._dns_names(result, cgids)
        for peer in result.new_peers:
            ip = peer["name"].rsplit(":", 1)[0].strip("[]")
            if ip in names:
                peer["dns_name"] = names[ip]
            if self.kube is not None and (service := self.kube.service_of(peer["name"])):
                peer["service"] = service
        result.novelty_note = "; ".join(notes)

    def _add_anomalies(self, result: CaptureResult, scope: identity.ResolvedTarget) -> None:
        """The early warning's flagged anomalies of the target's workloads (what they never did
        before, against their whole recorder history; unlike ``new_peers``, which compares with
        the capture's baseline only)."""
        if self.early_warning is not None and scope.baseline_cgroups:
            result.anomalies = self.early_warning.anomalies(set(scope.baseline_cgroups))

    def _dns_names(self, result: CaptureResult, cgids: set[int]) -> dict[str, str]:
        """ip -> the host name the target's own lookups resolved to it (recorder, then capture)."""
        names: dict[str, str] = {}
        rec = self.recorder
        cov = rec.coverage() if rec else None
        if rec is not None and cov and "dns" in rec.sessions:
            r, _ = rec.window("dns", cgids, cov[0], cov[1], min_window_s=0.0)
            if r is not None:
                names |= dns_probe.names_by_address(r)
        if (r := result.incident.get("dns")) is not None and r.error is None:
            names |= dns_probe.names_by_address(r)
        return names

    def validate_recorder_query(self, query) -> RecorderQuery:
        """A /v1/recorder query string (a multidict) as a RecorderQuery; RequestError if bad."""
        return RecorderQuery.from_query(query, known_probes=list(self.recorder.probe_names) if self.recorder else [])

    async def recorder_window(self, q: RecorderQuery) -> dict:
        """The recorder's view of a target over [since, until]: per-probe results summed over
        the window, and per-interval counters for charts."""
        if self.recorder is None:
            raise RequestError("this agent runs without its flight recorder (--no-recorder)")
        cgids: set[int] | None = None
        target_desc = "(whole node)"
        if not q.target.is_empty():
            scope = await asyncio.to_thread(identity.resolve, q.target)
            cgids, target_desc = scope.baseline_cgroups, q.target.describe()
        return await asyncio.to_thread(self._recorder_window, cgids, target_desc, q)

    def _recorder_window(self, cgids: set[int] | None, target_desc: str, q: RecorderQuery) -> dict:
        rec = self.recorder
        assert rec is not None  # recorder_window refused the query otherwise
        now = time.time()
        cov = rec.coverage()
        since = q.since if q.since is not None else (cov[0] if cov else now)
        until = q.until if q.until is not None else now
        probes = q.probes or list(rec.sessions)
        window, notes = {}, {}
        for name in probes:
            r, note = rec.window(name, cgids, since, until, min_window_s=0.0)
            notes[name] = note
            if r is not None:
                window[name] = r.to_dict()
        return {"node": self.node, "target": target_desc,
                "cgroup_ids": sorted(cgids) if cgids is not None else None,
                "since": since, "until": until, "recorder": rec.status(),
                "window": window, "notes": notes,
                "series": rec.series(cgids, since, until, probes)}

    def status(self) -> dict:
        return {"node": self.node, "pid": os.getpid(), "active_captures": len(self.active),
                "armed_captures": len(self.armed),
                "max_concurrent": self.max_concurrent, "completed_captures": self.completed,
                "preloaded": sorted(self._spares),
                "kernel_headers": self.kernel_headers,
                "recorder": None if self.recorder is None else self.recorder.status(),
                "early_warning": None if self.early_warning is None else self.early_warning.status()}

    def early_warnings(self) -> dict:
        """The early warning's state: per scored workload, the model's latest scores and its
        pending and firing domains (with Kubernetes names when the agent has an API)."""
        if self.early_warning is None:
            why = "without its flight recorder (--no-recorder)" if self.recorder is None else "with --no-early-warning"
            raise RequestError(f"this agent runs {why}: no early warning")
        workloads = self.early_warning.snapshot()
        for w in workloads:
            w["labels"] |= self.workload_names(w["labels"])
        return {"node": self.node, "status": self.early_warning.status(), "workloads": workloads}

    def workload_names(self, labels: dict[str, str]) -> dict[str, str]:
        """namespace, pod and workload names for an early warning's pod, from the Kubernetes API."""
        if self.kube is None or not labels.get("pod_uid"):
            return {}
        try:
            found = self.kube.enrich({"pod_uid": labels["pod_uid"]})
        except Exception as e:  # noqa: BLE001 - the API's errors vary; the labels go on without names
            log.warning("event=early_warning_names_failed error=%s", e)
            return {}
        return {k: str(found[k]) for k in ("namespace", "pod", "workload_kind", "workload") if found.get(k)}
