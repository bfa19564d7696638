"""The pipeline's trace step: spans of the alerting service in the baseline and incident windows,
from whichever back-end is configured, turned into per-dependency evidence with trace links.

A back-end that cannot be reached is reported in the evidence (``reachable: false`` and why),
never raised: an incident report without traces is still worth posting.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from responder.config import Settings
from responder.evidence.traces.backends import TraceBackend, TraceBackendError
from responder.evidence.traces.evidence import trace_evidence
from responder.render import links

log = logging.getLogger(__name__)

# Spans read per window. A minute of a busy service at a few hundred spans/s fits; beyond that
# the newest are enough to compare quantiles, and the evidence says how many it saw.
SPAN_LIMIT = 50_000


async def gather_trace_evidence(backend: TraceBackend, settings: Settings, service: str,
                                baseline: tuple[float, float], incident: tuple[float, float]) -> dict[str, Any]:
    windows = {"baseline": {"start": baseline[0], "end": baseline[1], "spans": 0},
               "incident": {"start": incident[0], "end": incident[1], "spans": 0}}
    try:
        base_spans, inc_spans = await asyncio.gather(
            backend.find_spans(service, baseline[0], baseline[1], SPAN_LIMIT),
            backend.find_spans(service, incident[0], incident[1], SPAN_LIMIT))
    except TraceBackendError as e:
        log.warning("event=traces_unreachable backend=%s error=%s", backend.name, e)
        return {"backend": backend.name, "service": service, "reachable": False, "error": str(e),
                **windows, "dependencies": [], "exemplars": []}
    evidence = await asyncio.to_thread(trace_evidence, base_spans, inc_spans, service)
    evidence.update(backend=backend.name, service=service, reachable=True, error=None)
    evidence["baseline"] = {**windows["baseline"], "spans": len(base_spans)}
    evidence["incident"] = {**windows["incident"], "spans": len(inc_spans)}
    for ex in evidence.get("exemplars", []):
        ex["url"] = links.trace_url(settings, ex["trace_id"])
    return evidence
