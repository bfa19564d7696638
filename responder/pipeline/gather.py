"""Stage *gather*: the evidence, read at once from every source. The kernel capture (the capture
agents, scoped by the previous stage), the traces and the playbook's PromQL run concurrently;
traces and metrics read their incident window up to the capture's end. Each source compares an
incident window with a baseline that ends where the burn began.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from capture.client import AgentError
from capture.schemas import CaptureRequest, CaptureResult, RequestError
from common.timefmt import parse_timestamp
from responder.config import Settings
from responder.evidence.prometheus import burn_onset, prometheus_evidence
from responder.evidence.traces.backends import TraceBackend
from responder.evidence.traces.gather import gather_trace_evidence
from responder.pipeline.stage import Context
from responder.playbooks import Playbook
from responder.slo.rules import BEGAN_AT_ANNOTATION
from responder.store.base import Incident, StoreUnavailable

log = logging.getLogger(__name__)


class AgentClient(Protocol):
    async def capture(self, req: CaptureRequest) -> CaptureResult: ...


# An alert's began_at annotation may move its start back by at most this much.
MAX_BEGAN_EARLIER_S = 3600.0


def alert_began(alert: dict[str, Any]) -> float:
    """When an alert's trouble began: its startsAt, or the earlier moment its ``began_at``
    annotation names (the kernel early warning's: the agent saw it before Prometheus did). A
    ``began_at`` that is not a number, lies after startsAt or more than MAX_BEGAN_EARLIER_S before
    it is ignored. Raises KeyError, ValueError or TypeError without a readable startsAt."""
    start = parse_timestamp(alert["startsAt"]).timestamp()
    try:
        began = float((alert.get("annotations") or {}).get(BEGAN_AT_ANNOTATION, "nan"))
    except (TypeError, ValueError):
        return start
    return began if start - MAX_BEGAN_EARLIER_S <= began <= start else start


def baseline_end(incident: Incident) -> float | None:
    """The baseline ends where the burn under investigation began: the earliest firing alert's
    start (``alert_began``). An incident investigated before (alerts joined its group later)
    looks only at alerts that started after that verdict, so a long-window alert still firing from
    an earlier burn does not pull the baseline back into it."""
    starts = []
    for a in incident.alerts:
        if a.get("status", "firing") != "firing":
            continue
        try:
            starts.append(alert_began(a))
        except (KeyError, ValueError, TypeError):
            continue
    if incident.attributed_at is not None:
        starts = [s for s in starts if s > incident.attributed_at] or starts
    return min(starts) if starts else None


# The application evidence's incident window reaches back to the burn's start, but no further
# than this: a long-running incident's re-investigation compares its last minutes, not hours of
# spans.
MAX_INCIDENT_WINDOW_S = 600.0
# Metrics get a longer baseline than the capture: SLO series are smooth and cheap to read, and
# the chart shows where the burn rate sat before the alert.
METRICS_BASELINE_S = 900.0
# How long finding the burn's onset in Prometheus may delay the capture.
ONSET_TIMEOUT_S = 3.0


def evidence_windows(burn_start: float | None, end: float, duration_s: float,
                     baseline_s: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(baseline, incident) windows for traces and metrics, ending at ``end``.

    The incident window starts where the burn began (at least one capture long, at most
    MAX_INCIDENT_WINDOW_S); the baseline is the ``baseline_s`` just before it, the same place
    the kernel capture's baseline comes from.
    """
    start = end - duration_s if burn_start is None else burn_start
    start = min(max(start, end - MAX_INCIDENT_WINDOW_S), end - duration_s)
    return (start - baseline_s, start), (start, end)


class Gather:
    name = "gather"

    def __init__(self, agent: AgentClient, settings: Settings, traces: TraceBackend | None = None) -> None:
        self.agent = agent
        self.settings = settings
        self.traces = traces

    async def run(self, ctx: Context) -> None:
        playbook = ctx.playbook
        if playbook is None:
            return
        if ctx.preliminary is None:  # else the preliminary stage found the onset a moment ago
            ctx.onset = await self.burn_began(ctx.incident, playbook, ctx.labels)
        duration = ctx.duration_s
        (capture, gap), evidence = await asyncio.gather(
            self.capture(ctx, playbook, duration),
            self.application_evidence(ctx.incident, playbook, ctx.labels, time.time() + duration, ctx.onset, duration))
        ctx.evidence.update(evidence)  # beside what earlier stages recorded (an early warning joined)
        ctx.capture = capture
        if gap:
            ctx.gaps.append(gap)

    async def capture(self, ctx: Context, playbook: Playbook, duration_s: float,
                      source: str = "live") -> tuple[CaptureResult | None, str | None]:
        """The kernel capture over the scope (the playbook's probes unless the request named
        others), live or from the agents' flight recorders; (result, None) or (None, why there is none)."""
        if ctx.scope is None:
            return None, None  # the scope stage said why
        try:
            req = CaptureRequest(target=ctx.scope.target, probes=list(ctx.options.probes or playbook.capture.probes),
                                 duration_s=duration_s, baseline_s=playbook.capture.baseline_s,
                                 baseline_end=ctx.onset, incident_id=ctx.incident.id, source=source)
            result = await self.agent.capture(req)
            result.errors += ctx.scope.notes  # pods left out, and why
            return result, None
        except RequestError as e:
            return None, f"could not scope the capture: {e}"
        except AgentError as e:  # the thread gets the sentence, the log the address and the cause
            log.warning("incident=%s event=capture_failed error=%s", ctx.incident.id, e.detail)
            return None, f"the capture failed: {e}"
        except StoreUnavailable:
            raise
        except Exception as e:  # a bug: the log has the traceback, the thread a sentence
            log.exception("incident=%s event=capture_failed", ctx.incident.id)
            return None, f"the capture failed ({type(e).__name__}; the responder's log has the details)"

    async def burn_began(self, inc: Incident, playbook: Playbook, labels: dict[str, str]) -> float | None:
        """Where the baselines end: the burn's onset from Prometheus when it can tell, else the
        alert's start; earlier still where the trouble of an early warning this page joined began."""
        alert_start = baseline_end(inc)
        if alert_start is None:
            return None
        early = ((inc.evidence or {}).get("early_warning") or {}).get("began_at")
        if isinstance(early, (int, float)) and alert_start - MAX_BEGAN_EARLIER_S <= early < alert_start:
            log.info("incident=%s event=onset_from_early_warning onset=%.1f alert_start=%.1f", inc.id, early,
                     alert_start)
            alert_start = early
        try:
            # Bounded: a Prometheus that is down must not hold the kernel capture back.
            onset = await asyncio.wait_for(
                burn_onset(self.settings, list(playbook.prometheus.queries), labels, alert_start), ONSET_TIMEOUT_S)
        except TimeoutError:
            log.warning("incident=%s event=burn_onset_timeout after_s=%s", inc.id, ONSET_TIMEOUT_S)
            onset = None
        if onset is not None and onset < alert_start:
            log.info("incident=%s event=burn_onset onset=%.1f alert_start=%.1f lead_s=%.1f", inc.id, onset,
                     alert_start, alert_start - onset)
            return onset
        return alert_start

    async def application_evidence(self, inc: Incident, playbook: Playbook, labels: dict[str, str],
                                   end: float, onset: float | None, duration_s: float) -> dict[str, Any]:
        """Traces and Prometheus over the baseline and incident windows, read once ``end`` has passed."""
        baseline, incident = evidence_windows(onset, end, duration_s,
                                              playbook.capture.baseline_s)
        await asyncio.sleep(max(0.0, end - time.time()))
        service = playbook.traces.service(labels)

        async def traces() -> dict[str, Any] | None:
            if self.traces is None or service is None:
                return None
            return await gather_trace_evidence(self.traces, self.settings, service, baseline, incident)

        async def metrics() -> dict[str, Any] | None:
            if not playbook.prometheus.queries:
                return None
            longer = (incident[0] - max(METRICS_BASELINE_S, baseline[1] - baseline[0]), incident[0])
            return await prometheus_evidence(self.settings, list(playbook.prometheus.queries), labels, longer,
                                             incident, step=playbook.prometheus.step_s)

        t: dict[str, Any] | BaseException | None
        p: dict[str, Any] | BaseException | None
        t, p = await asyncio.gather(traces(), metrics(), return_exceptions=True)
        out: dict[str, Any] = {}
        for key, value in (("traces", t), ("prometheus", p)):
            if isinstance(value, BaseException):  # a bug, not an outage (those are reported inside)
                log.error("incident=%s event=%s_evidence_failed error=%r", inc.id, key, value)
                value = {"reachable": False, "error": f"reading it failed ({type(value).__name__}; the responder's "
                                                      "log has the details)"}
            out[key] = value
        log.info("incident=%s event=application_evidence traces=%s prometheus=%s", inc.id,
                 None if t is None else (t.get("reachable") if isinstance(t, dict) else "error"),
                 None if p is None else (p.get("reachable") if isinstance(p, dict) else "error"))
        return out

