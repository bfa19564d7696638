"""Runs scenarios, one after another, on one lab stack, and records each as a case.

Per scenario:

1. **baseline**: load only, ``baseline_s``; then the baseline is checked against the stack's
   first healthy one at the same load rate (``check_baseline``: no fault left, no page alert,
   error share and p90 latency near the reference). An unhealthy baseline is extended while it
   recovers (up to ``BASELINE_WAIT_S``), then the service is restarted once; if it is still
   unhealthy, the case is recorded as ``invalid`` with the reasons, its faults are not
   injected, and the scorecard counts it apart instead of scoring it;
2. **faults**: each fault applied at its ``start_s`` and cleared at its ``stop_s`` (offsets into
   the phase); meanwhile the responder's ``GET /api/incidents`` is polled for an incident that a
   real alert opened after the first fault's onset;
3. **verdict**: the phase lasts ``fault_s``, and longer while a verdict is still coming: the
   faults stay on until the incident is attributed (bounded by ``VERDICT_TIMEOUT_S``), since
   clearing them mid-capture would hide them from the capture. If no alert opened an incident
   by the end of ``fault_s``, the lab starts the same pipeline ad hoc (``POST /api/captures``)
   and the case is marked undetected;
4. **recovery**: faults cleared, then (bounded by ``RECOVERY_TIMEOUT_S``) until Prometheus has no
   page alert firing or pending and the case's incident is resolved, so the next scenario's
   baseline is healthy and its alert is a new one. Ticket alerts do not hold a run up: at the
   lab's window scale their 6 h window lasts minutes, longer than a scenario.

The incident of a case is the first one holding a firing alert that went pending after the
first fault's onset; with a ticket alert still open from an earlier scenario, the new page alert
joins that incident, so its verdict must also be newer than the onset.

Each case is written to ``DIR/cases/NAME.json`` as soon as it completes (atomically), so a run
that is killed keeps what it finished: the incident as the responder stored it (verdict,
capture, evidence), the timings and ``detection_s`` = first fault's onset -> the incident's
``attributed_at``. A progress line on stderr shows the scenario, the phase and the time left.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from lab.scenarios import RECOVERY_S, STACK_START_S, VERDICT_TAIL_S, Scenario

log = logging.getLogger("lab.runner")

CASE_VERSION = 2  # 2: baseline_check and invalid
POLL_S = 2.0
# How long a verdict may still take after the fault phase: the playbook's capture (10 s) and
# evidence reads, plus a wait behind another incident's job on a 2-CPU machine.
VERDICT_TIMEOUT_S = 120.0
# Alerts resolve once the short burn window forgets the fault; the bound keeps one stuck alert
# from stalling a suite (the case records that recovery did not finish).
RECOVERY_TIMEOUT_S = 180.0
# The newest incidents are enough: a case opens a handful at most.
INCIDENT_PAGE = 10
# The ad hoc trigger asks for the playbook with the widest capture (backend_latency included) and
# trace evidence, so an undetected case is investigated like a detected latency incident.
ADHOC_PLAYBOOK = "llm-latency-burn"
ADHOC_REASON = "lab: no alert fired during the fault phase"


# A baseline is healthy when, over its window, at most this share of requests failed (or
# REFERENCE_FACTOR x the reference's share, if that is higher)...
BASELINE_MAX_ERROR_SHARE = 0.02
# ...its p90 latency is at most REFERENCE_FACTOR x the reference's, or the reference's plus
# BASELINE_LATENCY_SLACK_S. The reference is the first healthy baseline at the same load rate
# (latency grows with the rate: a healthy p90 is 0.3 s at 10 req/s and up to 0.9 s at 20 on 2
# vCPUs); at a rate not seen yet, the p90 must stay under BASELINE_MAX_P90_S, half the lab's 2 s
# latency objective...
REFERENCE_FACTOR = 2.0
BASELINE_LATENCY_SLACK_S = 0.3
BASELINE_MAX_P90_S = 1.0
# ...and requests were sent at all. An unhealthy baseline is extended by BASELINE_STEP_S at a
# time, at most BASELINE_WAIT_S, before the service is restarted once.
BASELINE_WAIT_S = 90.0
BASELINE_STEP_S = 10.0


class StackBroken(RuntimeError):
    """A fault could not be cleared: the run stops (the stack is removed) after writing the case."""


# --- progress ------------------------------------------------------------------------------------

class Progress:
    """One line on stderr: scenario i/n, phase, time left in the phase and in the suite.
    Rewritten in place on a terminal; a line per phase (and every ``every_s``) otherwise.
    Phases that end on an event (verdict, recovery) show their bound, and the suite's time left
    counts their typical length."""

    TYPICAL = {"verdict": VERDICT_TAIL_S, "recovery": RECOVERY_S}

    def __init__(self, scenarios: list[Scenario], stream=None, every_s: float = 15.0):
        self.scenarios = scenarios
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = every_s
        self.index, self.phase = 0, "starting the stack"
        self.started, self.length = time.time(), STACK_START_S
        self._last_line = 0.0
        self._task: asyncio.Task | None = None

    def set(self, index: int, phase: str, length_s: float) -> None:
        self.index, self.phase, self.started, self.length = index, phase, time.time(), length_s
        self.render(force=True)

    @staticmethod
    def _scenario_s(s: Scenario) -> float:
        return s.baseline_s + s.fault_s + VERDICT_TAIL_S + RECOVERY_S

    def suite_left_s(self) -> float:
        elapsed = time.time() - self.started
        if self.phase == "starting the stack":
            return max(0.0, self.length - elapsed) + sum(map(self._scenario_s, self.scenarios))
        s = self.scenarios[self.index]
        typical = self.TYPICAL.get(self.phase, self.length)
        after = {"baseline": s.fault_s + VERDICT_TAIL_S + RECOVERY_S, "faults": VERDICT_TAIL_S + RECOVERY_S,
                 "verdict": RECOVERY_S}.get(self.phase, 0.0)
        return max(0.0, typical - elapsed) + after + sum(map(self._scenario_s, self.scenarios[self.index + 1:]))

    def line(self) -> str:
        elapsed = time.time() - self.started
        if self.phase == "starting the stack":
            head, phase = "lab", f"{self.phase}, {elapsed:.0f} s"
        else:
            head = f"lab {self.index + 1}/{len(self.scenarios)} {self.scenarios[self.index].name}"
            phase = (f"{self.phase}, {elapsed:.0f} s (at most {self.length:.0f} s)" if self.phase in self.TYPICAL
                     else f"{self.phase}, {max(0.0, self.length - elapsed):.0f} s left")
        return f"{head}: {phase}; suite about {self.suite_left_s() / 60:.0f} min left"

    def render(self, force: bool = False) -> None:
        now = time.time()
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
        elif force or now - self._last_line >= self.every_s:
            self.stream.write(self.line() + "\n")
        else:
            return
        self._last_line = now
        self.stream.flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.render()

    def __enter__(self) -> Progress:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# --- the responder, as a user reaches it ------------------------------------------

class LabApi:
    """The responder's incident API, over HTTP with its bearer token, as a user reaches it."""

    def __init__(self, responder_url: str, headers: dict[str, str]):
        self.responder_url = responder_url.rstrip("/")
        self.headers = dict(headers)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LabApi:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session:
            await self.session.close()

    async def _json(self, method: str, url: str, **kw) -> Any:
        assert self.session is not None
        async with self.session.request(method, url, **kw) as r:
            body = await r.json(content_type=None)
            if r.status >= 300:
                raise RuntimeError(f"{method} {url}: HTTP {r.status}: {body}")
            return body

    async def incidents(self) -> list[dict[str, Any]]:
        body = await self._json("GET", f"{self.responder_url}/api/incidents", params={"limit": str(INCIDENT_PAGE)},
                                headers=self.headers)
        return body["incidents"]

    async def incident(self, incident_id: str) -> dict[str, Any]:
        return await self._json("GET", f"{self.responder_url}/api/incidents/{incident_id}", headers=self.headers)

    async def adhoc_capture(self, labels: dict[str, str], started_at: float | None = None) -> str:
        # As a person would: "it started at ..." (the fault's onset), so the baseline is before it.
        req: dict[str, Any] = {"labels": labels, "reason": ADHOC_REASON, "playbook": ADHOC_PLAYBOOK}
        if started_at is not None:
            req["started_at"] = started_at
        body = await self._json("POST", f"{self.responder_url}/api/captures", headers=self.headers, json=req)
        return body["incident_id"]


def is_alert_incident(inc: dict[str, Any]) -> bool:
    source = inc.get("source") or ("adhoc" if str(inc.get("group_key", "")).startswith("adhoc:") else "alert")
    return source == "alert"


def _starts(alert: dict[str, Any]) -> float | None:
    from common.timefmt import parse_timestamp

    try:
        return parse_timestamp(alert["startsAt"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def opened_after(inc: dict[str, Any], onset: float) -> bool:
    """An incident a real alert raised for this fault: it holds a firing alert that started
    (went pending in Prometheus) after the onset. The incident itself may be older: an alert
    joins its group's incident while that is still open (a slow ticket alert keeps it open), and
    an alert that went pending before the onset belongs to what came before."""
    if not is_alert_incident(inc):
        return False
    starts = [_starts(a) for a in inc.get("alerts", []) if a.get("status") == "firing"]
    known = [t for t in starts if t is not None]
    if len(known) < len(starts):  # unreadable startsAt: fall back on when the incident opened
        return inc.get("created_at", 0) >= onset
    return any(t >= onset for t in known)


def first_incident(incidents: list[dict[str, Any]], onset: float) -> dict[str, Any] | None:
    fresh = [i for i in incidents if opened_after(i, onset)]
    return min(fresh, key=lambda i: i.get("created_at", 0)) if fresh else None


# --- one scenario ----------------------------------------------------------------------------------

def baseline_problems(summary: dict[str, Any] | None, reference: dict[str, Any] | None) -> list[str]:
    """What is wrong with a baseline window's load (``LoadStats.summary``) against the reference
    (the stack's first healthy baseline; None: judge by the absolute bounds alone)."""
    if not summary or not summary.get("requests"):
        return ["no requests were answered or sent in the baseline window"]
    problems = []
    errors = 1.0 - (summary.get("ok_ratio") or 0.0)
    ref_errors = 1.0 - (reference.get("ok_ratio") or 0.0) if reference else 0.0
    allowed = max(BASELINE_MAX_ERROR_SHARE, REFERENCE_FACTOR * ref_errors)
    if errors > allowed:
        problems.append(f"{errors:.1%} of baseline requests failed (allowed {allowed:.1%})")
    p90 = (summary.get("latency_s") or {}).get("p90")
    ref_p90 = ((reference or {}).get("latency_s") or {}).get("p90")
    if p90 is not None:
        if ref_p90 is not None:
            allowed_s = max(REFERENCE_FACTOR * ref_p90, ref_p90 + BASELINE_LATENCY_SLACK_S)
            why = f"reference {ref_p90:.2f} s"
        else:
            allowed_s, why = BASELINE_MAX_P90_S, "no reference at this rate yet"
        if p90 > allowed_s:
            problems.append(f"baseline p90 latency {p90:.2f} s over {allowed_s:.2f} s ({why})")
    return problems


async def check_baseline(stack, window_s: float, reference: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the stack is as healthy as at its first baseline: no fault left on it, no page
    alert firing or pending, and the last ``window_s`` of load near the reference."""
    now = time.time()
    summary = stack.load_stats.summary(since=now - window_s, until=now)
    problems = baseline_problems(summary, reference)
    if stack.faults:
        problems.append("faults still applied: " + ", ".join(f.describe() for f in stack.faults))
    knobs: list[str] = stack.knobs_changed()
    if knobs:
        problems.append("fault knobs not at their healthy values: " + ", ".join(knobs))
    try:
        paging = [a for a in await stack.alerts() if _blocks_recovery(a)]
    except (OSError, TimeoutError, aiohttp.ClientError, ValueError, KeyError) as e:
        # not known to be healthy: the baseline is extended and checked again
        problems.append(f"Prometheus's alerts could not be read: {type(e).__name__}: {e}")
        paging = []
    if paging:
        problems.append("page alerts " + ", ".join(f"{a['labels'].get('alertname')} {a['state']}" for a in paging))
    return {"at": now, "window_s": window_s, "healthy": not problems, "problems": problems, "load": summary}


class CaseRun:
    """One scenario while it runs; ``rec`` becomes its case file."""

    def __init__(self, scenario: Scenario, scenario_file: str | None):
        self.s = scenario
        self.rec: dict[str, Any] = {
            "version": CASE_VERSION, "name": scenario.name, "scenario_file": scenario_file,
            "scenario": scenario.to_dict(), "expect": list(scenario.expect), "seed": scenario.seed,
            "started_at": time.time(), "fault_phase_started_at": None, "fault_onset": None,
            "faults": [], "fault_phase_ended_at": None, "cleared_at": None, "finished_at": None,
            "trigger": None, "detected": False, "detection_s": None, "incident_id": None, "incident": None,
            "other_incidents": [], "recovered": None, "recovery_s": None, "load": {}, "service_restarts": None,
            "baseline_check": None, "invalid": None, "notes": [], "error": None,
            # The agent's kernel early warnings seen firing during the fault phase and the verdict
            # wait: {"workload", "domain", "signal", "since", "firing_since", "seen_at"}, each once;
            # and the anomalies it flagged ({"workload", "kind", "what", "name", "first_seen", "score"}).
            "early_warnings": [], "anomalies": [],
        }

    def note(self, text: str) -> None:
        log.info("case=%s %s", self.s.name, text)
        self.rec["notes"].append(text)

    async def watch_early_warnings(self, stack) -> None:
        """Record the early warnings the responder's in-process agent has firing now (its detailed
        /healthz); a failed read is a note, not a failed case."""
        try:
            body = await stack.responder.health()
        except Exception as e:  # noqa: BLE001 - the case goes on without this figure
            self.note(f"early warning state unreadable: {type(e).__name__}: {e}")
            return
        state = (body.get("agent") or {}).get("early_warning") or {}
        known = {(w["workload"], w["domain"], w["firing_since"]) for w in self.rec["early_warnings"]}
        for w in state.get("firing_now") or []:
            if (w.get("workload"), w.get("domain"), w.get("firing_since")) not in known:
                self.rec["early_warnings"].append(dict(w, seen_at=round(time.time(), 3)))
                self.note(f"early warning: {w.get('domain')} ({w.get('signal')}) on {w.get('workload')}")
        flagged = {(a["workload"], a["kind"], a["what"]) for a in self.rec["anomalies"]}
        for a in state.get("anomalies_now") or []:
            if (a.get("workload"), a.get("kind"), a.get("what")) not in flagged:
                self.rec["anomalies"].append(dict(a, seen_at=round(time.time(), 3)))
                self.note(f"anomaly flagged: {a.get('kind')} {a.get('what')} on {a.get('workload')}")


def _load_summary(stack, since: float | None, until: float | None) -> dict[str, Any] | None:
    """What the load generator saw in a phase: requests by status, latency quantiles."""
    if since is None or until is None:
        return None
    return stack.load_stats.summary(since=since, until=until)


def attributed_since(inc: dict[str, Any], since: float) -> bool:
    return bool(inc.get("verdict")) and (inc.get("attributed_at") or 0) >= since


async def _wait_verdict(api: LabApi, incident_id: str, since: float, until: float) -> dict[str, Any]:
    """The incident once it holds a verdict stored after ``since`` (an incident an alert joined
    may still hold the verdict of an earlier alert), or as it is at ``until``."""
    inc = await api.incident(incident_id)
    while not attributed_since(inc, since) and time.time() < until:
        await asyncio.sleep(POLL_S)
        inc = await api.incident(incident_id)
    return inc


async def _healthy_baseline(stack, scenario: Scenario, run: CaseRun, index: int, progress: Progress,
                            references: dict[str, dict[str, Any]]) -> bool:
    """The baseline phase: load for ``baseline_s``, then checked (see ``check_baseline``);
    extended while it recovers, then the service restarted once. ``references`` holds the
    stack's first healthy baseline at each load rate (set here when missing). Records
    ``baseline_check``."""
    progress.set(index, "baseline", scenario.baseline_s)
    await asyncio.sleep(scenario.baseline_s)
    window = scenario.baseline_s
    reference = references.setdefault(f"{scenario.load_rps:g}", {})
    check = await check_baseline(stack, window, reference.get("load"))
    waited, restarted = 0.0, False
    while not check["healthy"]:
        if waited >= BASELINE_WAIT_S:
            if restarted:
                break
            run.note("baseline still unhealthy after waiting: restarting the service")
            restarted, waited = True, 0.0
            try:
                await stack.service.restart()
            except RuntimeError as e:  # lab.stack.StackError: it exited and did not come back healthy
                check["problems"].append(f"restarting the service failed: {e}")
                break
            progress.set(index, "baseline (after a restart)", window)
            await asyncio.sleep(window)
        else:
            if not waited:
                run.note("baseline unhealthy, waiting: " + "; ".join(check["problems"]))
            progress.set(index, "baseline (extended)", BASELINE_STEP_S)
            await asyncio.sleep(BASELINE_STEP_S)
            waited += BASELINE_STEP_S
        check = await check_baseline(stack, window, reference.get("load"))
    check.update(extended_s=waited, service_restarted=restarted, reference=reference.get("case"))
    run.rec["baseline_check"] = check
    if check["healthy"] and not reference:
        reference.update(case=scenario.name, load=check["load"])
    return bool(check["healthy"])


async def run_case(stack, api: LabApi, scenario: Scenario, index: int, progress: Progress,
                   scenario_file: str | None = None, references: dict[str, dict[str, Any]] | None = None
                   ) -> dict[str, Any]:
    """Run one scenario on a running ``lab.stack.LabStack``; returns the case record (also when
    the case failed: then ``error`` says why, and the suite goes on). ``references`` holds the
    suite's first healthy baseline per load rate, shared across its cases."""
    run = CaseRun(scenario, scenario_file)
    rec = run.rec
    # The early warning's key for the service (a plain cgroup the stack names for it): its
    # warnings and flags are the case's; another workload's on the same node are not.
    rec["service_workload"] = f"cgroup:{stack.labels['cgroup']}"
    restarts_before = stack.service.restarts
    references = references if references is not None else {}
    try:
        stack.set_load_rps(scenario.load_rps)
        if scenario.seed is not None and getattr(stack, "load", None) is not None:
            stack.load.rng.seed(scenario.seed)  # the same questions in the same order on a rerun
        if not await _healthy_baseline(stack, scenario, run, index, progress, references):
            rec["invalid"] = "baseline not healthy: " + "; ".join(rec["baseline_check"]["problems"])
            run.note(rec["invalid"] + " (faults not injected; the case is not scored)")
            rec["finished_at"] = time.time()
            return rec
        found = await _fault_phase(stack, api, scenario, run, index, progress)

        onset = rec["fault_onset"] or rec["fault_phase_started_at"]
        progress.set(index, "verdict", VERDICT_TIMEOUT_S)
        until = time.time() + VERDICT_TIMEOUT_S
        if found:
            rec["trigger"], rec["detected"] = "alert", True
            since = onset
            inc = await _wait_verdict(api, found["id"], since, until)
        else:
            # The faults are still on: the ad hoc capture sees them as an alert's capture would.
            rec["trigger"] = "adhoc"
            since = time.time()
            incident_id = await api.adhoc_capture(stack.labels, onset)
            run.note(f"no alert by the end of the fault phase: ad hoc capture, incident {incident_id}")
            inc = await _wait_verdict(api, incident_id, since, until)
        rec["incident_id"], rec["incident"] = inc["id"], inc
        await run.watch_early_warnings(stack)
        if attributed_since(inc, since):
            if rec["detected"]:
                rec["detection_s"] = round(inc["attributed_at"] - onset, 3)
            v = inc["verdict"]
            run.note(f"verdict {', '.join(v['domains']) or 'abstain'} at {v['confidence']:.2f}")
        else:
            rec["error"] = f"incident {inc['id']} had no verdict {VERDICT_TIMEOUT_S:.0f} s after the fault phase"
        rec["other_incidents"] = [
            {"id": i["id"], "source": i.get("source"), "created_at": i.get("created_at"),
             "domains": (i.get("verdict") or {}).get("domains")}
            for i in await api.incidents()
            if i["id"] != inc["id"] and ((i.get("attributed_at") or 0) >= onset or i.get("created_at", 0) >= onset)]
    except asyncio.CancelledError:
        raise
    except Exception as e:  # one broken case is recorded, and the suite goes on
        log.exception("case=%s event=failed", scenario.name)
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            await stack.clear_all()
        except Exception as e:
            # A fault that cannot be cleared leaves the stack unfit for the next scenario.
            rec["error"] = f"{rec['error'] + '; ' if rec['error'] else ''}clearing the faults failed: {e!r}"
            rec["stack_broken"] = True
        now = time.time()
        for fr in rec["faults"]:
            if fr["applied_at"] and not fr["cleared_at"]:
                fr["cleared_at"] = now
        rec["cleared_at"] = now

    if rec.get("stack_broken"):
        rec["finished_at"] = time.time()
        return rec
    progress.set(index, "recovery", RECOVERY_TIMEOUT_S)
    try:
        rec["recovered"], rec["recovery_s"], left = await _recover(stack, api, rec["incident_id"], rec["cleared_at"])
        if left:
            run.note(("still firing after recovery: " if not rec["recovered"] else "left firing (ticket): ") + left)
    except Exception as e:  # noqa: BLE001 - the next scenario still runs; the case says why
        rec["recovered"] = False
        run.note(f"recovery check failed: {type(e).__name__}: {e}")
    phases = (("baseline", rec["started_at"], rec["fault_phase_started_at"]),
              ("faults", rec["fault_phase_started_at"], rec["fault_phase_ended_at"]),
              ("verdict", rec["fault_phase_ended_at"], rec["cleared_at"]),
              ("recovery", rec["cleared_at"], time.time()))
    rec["load"] = {name: _load_summary(stack, a, b) for name, a, b in phases}
    rec["service_restarts"] = stack.service.restarts - restarts_before
    rec["finished_at"] = time.time()
    return rec


async def _fault_phase(stack, api: LabApi, scenario: Scenario, run: CaseRun, index: int,
                       progress: Progress) -> dict[str, Any] | None:
    """Apply and clear the faults on their schedule for ``fault_s``, watching for an incident a
    real alert raised after the onset; that incident (as first seen), or None."""
    rec = run.rec
    phase_start = time.time()
    rec["fault_phase_started_at"] = phase_start
    progress.set(index, "faults", scenario.fault_s)
    events: list[tuple[float, int, str, Any, dict]] = []  # (when, order, action, spec or Fault, its record)
    for spec in scenario.faults:
        fr: dict[str, Any] = {"kind": spec.kind, "params": dict(spec.params), "applied_at": None, "cleared_at": None}
        rec["faults"].append(fr)
        events.append((phase_start + spec.start_s, 0, "apply", spec, fr))
    deadline = phase_start + scenario.fault_s
    found = None
    while True:
        now = time.time()
        while events and events[0][0] <= now:
            _, _, action, what, fr = events.pop(0)
            if action == "apply":
                fault = await stack.apply(what.fault_dict())
                fr["applied_at"] = time.time()
                fr["anomaly"] = fault.anomaly()  # what the agent should flag, for an anomaly kind
                if rec["fault_onset"] is None:
                    rec["fault_onset"] = fr["applied_at"]
                run.note(f"applied {fault.describe()} at +{fr['applied_at'] - phase_start:.1f} s")
                if what.stop_s is not None:
                    events.append((phase_start + what.stop_s, 1, "clear", fault, fr))
                    events.sort(key=lambda e: (e[0], e[1]))
            else:
                await stack.clear(what)
                fr["cleared_at"] = time.time()
                run.note(f"cleared {what.describe()} at +{fr['cleared_at'] - phase_start:.1f} s")
        # A no-fault scenario's "onset" is the start of its phase: an alert after it is a false alarm.
        onset = rec["fault_onset"] if scenario.faults else phase_start
        await run.watch_early_warnings(stack)
        if found is None and onset is not None:
            found = first_incident(await api.incidents(), onset)
            if found:
                run.note(f"alert incident {found['id']} after the onset "
                         f"({', '.join(a['labels'].get('alertname', '?') for a in found.get('alerts', []))})")
        if now >= deadline:
            break
        wake = min([deadline, now + POLL_S] + [e[0] for e in events[:1]])
        await asyncio.sleep(max(0.05, wake - time.time()))
    rec["fault_phase_ended_at"] = time.time()
    return found


def _blocks_recovery(alert: dict[str, Any]) -> bool:
    # Ticket alerts are slow burns by design: at the lab's window scale their 6 h window is
    # minutes long and outlives a scenario, so waiting them out would triple a suite's length.
    # Page alerts (and alerts without a severity) are what the next scenario's detection needs gone.
    return alert.get("state") in ("firing", "pending") and alert.get("labels", {}).get("severity") != "ticket"


async def _recover(stack, api: LabApi, incident_id: str | None, since: float) -> tuple[bool, float, str]:
    """Until no page alert is firing or pending, and this case's incident is resolved unless
    only ticket alerts still hold it open (bounded by RECOVERY_TIMEOUT_S). (recovered, seconds,
    what is still firing)."""
    until = since + RECOVERY_TIMEOUT_S
    while True:
        alerts = await stack.alerts()
        blocking = [a for a in alerts if _blocks_recovery(a)]
        held = False
        if incident_id:
            inc = await api.incident(incident_id)
            held = (is_alert_incident(inc) and inc.get("status") == "firing"
                    and any(a.get("status") == "firing" and a.get("labels", {}).get("severity") != "ticket"
                            for a in inc.get("alerts", [])))
        left = ", ".join(f"{a['labels'].get('alertname')}/{a['labels'].get('severity')} {a['state']}"
                         for a in alerts if a.get("state") in ("firing", "pending"))
        if held:
            left += f"{'; ' if left else ''}incident {incident_id} open"
        if not blocking and not held:
            return True, round(time.time() - since, 1), left
        if time.time() >= until:
            return False, round(time.time() - since, 1), left
        await asyncio.sleep(POLL_S)


# --- the suite ---------------------------------------------------------------------------------------

def write_case(out: Path, case: dict[str, Any]) -> Path:
    """``out/cases/NAME.json``, atomically: a killed run never leaves half a case."""
    cases = Path(out) / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    path = cases / f"{case['name']}.json"
    tmp = cases / f".{case['name']}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(case, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


async def run_suite(scenarios: list[Scenario], out: Path, scenario_file: str | None = None,
                    progress_stream=None) -> list[dict[str, Any]]:
    """Start one stack, run every scenario on it, write each case as it completes."""
    from lab.stack import LabStack

    out = Path(out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    progress = Progress(scenarios, progress_stream)
    cases = []
    with progress:
        progress.render(force=True)
        # Components that draw random numbers (DNS, provider, proxy) are seeded once per stack,
        # with the first scenario's seed; each scenario's seed then reseeds the load's questions.
        async with LabStack(out / "stack", load_rps=scenarios[0].load_rps, seed=scenarios[0].seed) as stack:
            assert stack.responder is not None  # started on entering
            async with LabApi(stack.responder.url, stack.responder.headers()) as api:
                # the first healthy baseline at each load rate: what the others at that rate are held to
                references: dict[str, dict[str, Any]] = {}
                for i, scenario in enumerate(scenarios):
                    case = await run_case(stack, api, scenario, i, progress, scenario_file, references)
                    write_case(out, case)
                    cases.append(case)
                    if case.get("stack_broken"):
                        raise StackBroken(f"{scenario.name}: {case['error']}; stopping the run "
                                          f"({len(cases)} case(s) written)")
    return cases
