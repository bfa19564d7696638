"""The pipeline's metric step: a playbook's PromQL over the baseline and incident windows.

One range query per playbook query, from the start of the baseline to the end of the incident,
through prometheus-api-client (blocking, so each runs in a thread) with tenacity retrying what a
second try can fix: refused or dropped connections, timeouts, 5xx, 408 and 429. A query
Prometheus rejects (400, 422: the playbook's PromQL is wrong) is not retried; its error is
reported on that query. Prometheus being down is reported in the evidence
(``reachable: false`` and why), never raised: a report without metrics is still worth posting.

The result is the contract's PROM shape, plus a ``note`` per query (skipped for a missing label,
points dropped as NaN/Inf, series left out).
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from statistics import fmean
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from urllib3.util.retry import Retry

from responder.config import Settings
from responder.playbooks import PromQuery, render_query, skip_reason
from responder.render import links

log = logging.getLogger(__name__)

MAX_SERIES = 5
MAX_POINTS = 240
# Prometheus refuses range queries of more than 11,000 points per series; stay under it.
MAX_RESOLUTION_POINTS = 10_000
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 4.0
_RETRY_STATUSES = frozenset({408, 429})


class _RetryableAnswer(Exception):
    """Prometheus answered with a status a later attempt may not get (5xx, 408, 429)."""


class _QueryFailed(Exception):
    """Prometheus answered, but not with a result, and asking again would not change that."""


_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              _RetryableAnswer)


@dataclass
class _Outcome:
    attempts: int
    result: list[dict[str, Any]] | None = None
    error: str | None = None
    transient: bool = False  # the error is the last of the retried kind: no usable answer


async def prometheus_evidence(settings: Settings, queries: Sequence[PromQuery], labels: Mapping[str, str],
                              baseline: tuple[float, float], incident: tuple[float, float],
                              step: float | None = None) -> dict[str, Any] | None:
    """PROM evidence for ``queries`` filled from the alert's ``labels``; None without a Prometheus
    URL or without queries. ``baseline`` and ``incident`` are (start, end) in Unix seconds;
    ``step`` is the range-query resolution in seconds (default: the window over MAX_POINTS).

    Queries run side by side, so a hung Prometheus costs one query's retries, not one per query.
    ``attempts`` is the most any query needed. ``reachable`` is False when every query asked
    ended in retried failures (or none could be asked); one query failing alone keeps it True
    and sets that query's ``error``."""
    if not settings.prometheus_url or not queries:
        return None
    start, end = float(baseline[0]), float(incident[1])
    if not end > start:
        raise ValueError(f"the incident must end after the baseline starts ({start} .. {end})")
    step_s = _choose_step(start, end, step)
    entries: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], str]] = []
    for q in queries:
        expr = render_query(q, labels)
        entry: dict[str, Any] = {
            "name": q.name, "title": q.title, "expr": expr if expr is not None else q.expr,
            "unit": q.unit, "kind": q.kind, "baseline": _stats([]), "incident": _stats([]),
            "series": [], "link": None, "grafana_link": None, "error": None, "note": None}
        entries.append(entry)
        if expr is None:
            entry["note"] = skip_reason(q, labels)
            continue
        entry["link"] = links.prometheus_graph_url(settings, expr, start, end)
        entry["grafana_link"] = links.grafana_explore_url(settings, expr, start, end)
        pending.append((entry, expr))

    outcomes = await asyncio.gather(*(_run(settings, expr, start, end, step_s) for _, expr in pending))
    for (entry, _), outcome in zip(pending, outcomes):
        if outcome.error is not None:
            entry["error"] = outcome.error
        else:
            _fill(entry, outcome.result or [], baseline, incident)

    evidence: dict[str, Any] = {
        "reachable": True, "error": None, "attempts": max((o.attempts for o in outcomes), default=0),
        "baseline": {"start": float(baseline[0]), "end": float(baseline[1])},
        "incident": {"start": float(incident[0]), "end": float(incident[1])},
        "queries": entries,
    }
    if not pending:
        evidence.update(reachable=False, error="no query could be filled from the alert's labels, so "
                                               "Prometheus was not asked; see each query's note")
    elif all(o.transient for o in outcomes):
        last = outcomes[-1]
        evidence.update(reachable=False, error=(
            f"Prometheus at {settings.prometheus_url} could not be queried: {last.attempts} "
            f"attempt{'s' if last.attempts != 1 else ''} per query, last error: {last.error}"))
        log.warning("event=prometheus_unreachable url=%s attempts=%d error=%r",
                    settings.prometheus_url, last.attempts, last.error)
    return evidence


def _choose_step(start: float, end: float, step: float | None) -> float:
    span = end - start
    if step is None:
        return float(max(1, math.ceil(span / MAX_POINTS)))
    return max(float(step), span / MAX_RESOLUTION_POINTS)


async def _run(settings: Settings, expr: str, start: float, end: float, step_s: float) -> _Outcome:
    attempts = 0
    retrying = AsyncRetrying(
        stop=stop_after_attempt(settings.prometheus_attempts),
        wait=wait_exponential_jitter(multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S, jitter=BACKOFF_INITIAL_S),
        retry=retry_if_exception_type(_TRANSIENT),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                result = await asyncio.to_thread(_query_range, settings, expr, start, end, step_s)
    except _TRANSIENT as exc:
        return _Outcome(attempts, error=_describe(exc, settings.prometheus_timeout_s), transient=True)
    except _QueryFailed as exc:
        return _Outcome(attempts, error=str(exc))
    return _Outcome(attempts, result=result)


def _query_range(settings: Settings, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
    """One attempt, blocking. Raises a ``_TRANSIENT`` exception or ``_QueryFailed``."""
    responses: list[requests.Response] = []
    session = requests.Session()
    # The client reports a non-200 only as text; keep the response to read its status and body.
    session.hooks["response"].append(lambda r, *args, **kwargs: responses.append(r))
    prom = PrometheusConnect(
        url=settings.prometheus_url, session=session, timeout=settings.prometheus_timeout_s,
        # Its default urllib3 retries would multiply ours and hide the attempt count; this is
        # plain requests' own setting (read=False lets a read timeout surface as ReadTimeout).
        retry=Retry(0, read=False))
    try:
        return prom.custom_query_range(
            expr, start_time=datetime.fromtimestamp(start, tz=UTC),
            end_time=datetime.fromtimestamp(end, tz=UTC), step=f"{step_s:g}")
    except PrometheusApiClientException as exc:
        if not responses:
            raise _RetryableAnswer(str(exc)) from None
        response = responses[-1]
        message = f"HTTP {response.status_code}: {_error_text(response)}"
        if response.status_code >= 500 or response.status_code in _RETRY_STATUSES:
            raise _RetryableAnswer(message) from None
        raise _QueryFailed(f"Prometheus rejected the query ({message})") from None
    except _TRANSIENT:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise _QueryFailed(f"the answer is not a Prometheus query result ({type(exc).__name__}: {exc})") from None
    except requests.RequestException as exc:
        raise _QueryFailed(f"the request failed: {exc}") from None
    finally:
        prom.close()


def _error_text(response: requests.Response) -> str:
    """Prometheus's own error message ("1:5: parse error: ..."), else the start of the body."""
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            kind = f"{body['errorType']}: " if body.get("errorType") else ""
            return f"{kind}{body['error']}"
    except ValueError:
        pass
    text = " ".join(response.text.split())
    return text[:200] or response.reason or "no body"


def _describe(exc: BaseException, timeout_s: float) -> str:
    """A short cause for a transient failure: the OS error, the timeout, or the HTTP answer."""
    if isinstance(exc, _RetryableAnswer):
        return str(exc)
    if isinstance(exc, requests.ReadTimeout):
        return f"no answer within {timeout_s:g}s (timed out)"
    # requests wraps urllib3 wraps the socket error; the innermost OS error says the most.
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        stack.extend([getattr(e, "reason", None), e.__cause__, e.__context__,
                      *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))])
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within {timeout_s:g}s (timed out)"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def _fill(entry: dict[str, Any], result: list[dict[str, Any]], baseline: tuple[float, float],
          incident: tuple[float, float]) -> None:
    """Window statistics over every returned series, then the series kept for the chart."""
    series: list[dict[str, Any]] = []
    dropped = 0
    for item in result:
        points = []
        for ts, raw in item.get("values") or []:
            value = float(raw)
            if math.isfinite(value):
                points.append([float(ts), value])
            else:
                dropped += 1  # 0/0 ratios with no traffic, division by a zero rate
        series.append({"labels": dict(item.get("metric") or {}), "points": points})

    def values(points: list[list[float]], window: tuple[float, float]) -> list[float]:
        return [v for t, v in points if window[0] <= t <= window[1]]

    entry["baseline"] = _stats([v for s in series for v in values(s["points"], baseline)])
    entry["incident"] = _stats([v for s in series for v in values(s["points"], incident)])

    def incident_mean(s: dict[str, Any]) -> float:
        vals = values(s["points"], incident)
        return fmean(vals) if vals else -math.inf

    ranked = sorted((s for s in series if s["points"]), key=lambda s: (-incident_mean(s), sorted(s["labels"].items())))
    kept = ranked[:MAX_SERIES]
    entry["series"] = [{"labels": s["labels"], "points": _downsample(s["points"])} for s in kept]

    notes = []
    if dropped:
        notes.append(f"{dropped} NaN/Inf point{'s' if dropped != 1 else ''} dropped")
    if len(ranked) > len(kept):
        notes.append(f"showing {len(kept)} of {len(ranked)} series, highest incident mean first")
    if not result:
        notes.append("no data: the query matched no series in these windows")
    entry["note"] = "; ".join(notes) or None


def _stats(vals: list[float]) -> dict[str, float | None]:
    return {"mean": fmean(vals) if vals else None, "max": max(vals) if vals else None}


def _downsample(points: list[list[float]], limit: int = MAX_POINTS) -> list[list[float]]:
    """At most ``limit`` points picked evenly, keeping the first and the last."""
    if len(points) <= limit:
        return points
    last = len(points) - 1
    return [points[round(i * last / (limit - 1))] for i in range(limit)]


# How far before the alert to look for the burn's onset, and at what resolution.
ONSET_LOOKBACK_S = 900.0
ONSET_STEP_S = 1.0


async def burn_onset(settings: Settings, queries: Sequence[PromQuery], labels: Mapping[str, str],
                     alert_start: float) -> float | None:
    """When the burn behind an alert began. An alert's startsAt is when its condition first held,
    which with multi-window burn-rate rules is well after the burn began; a baseline ending at
    startsAt would hold part of the fault. Two readings, the earlier wins:

    - the last moment before ``alert_start`` at which a ``burn_rate`` query of the playbook was
      below 1 (the budget spent no faster than the objective allows). "A" rather than "every":
      the short window recovers within minutes of an earlier burn while the long one may still
      carry it, so the short window dates this burn;
    - the last moment at which every series of the ``onset`` queries was below 1: the service's
      other objectives. A fault often burns one objective before another (a slow dependency
      slows every answer at once, and fails them only when callers start timing out), and the
      baseline must end before the first.

    None when Prometheus, the queries or the data cannot say (the caller keeps startsAt); an
    ``onset`` query that fails or never saw the service healthy is left out.
    """
    if not settings.prometheus_url:
        return None
    own = [e for q in queries if q.kind == "burn_rate" and (e := render_query(q, labels))]
    every = [e for q in queries if q.kind == "onset" and (e := render_query(q, labels))]
    if not own:
        return None
    start = alert_start - ONSET_LOOKBACK_S
    outcomes = await asyncio.gather(*(_run(settings, e, start, alert_start, ONSET_STEP_S) for e in own + every))
    if any(o.result is None for o in outcomes[:len(own)]):
        return None
    lowest = _per_time(outcomes[:len(own)], min)  # time -> lowest burn rate of any own query
    healthy = [t for t, v in lowest.items() if v < 1.0]
    if not healthy:
        return None
    onset = max(healthy)
    others = [o for o in outcomes[len(own):] if o.result is not None]
    if others:
        highest = _per_time(others, max)  # time -> highest burn rate of any objective
        calm = [t for t, v in highest.items() if v < 1.0]
        if calm:
            onset = min(onset, max(calm))
    return onset


def _per_time(outcomes: Sequence[_Outcome], pick: Callable[[float, float], float]) -> dict[float, float]:
    """Time -> ``pick`` over every finite value of the outcomes' series at that time."""
    out: dict[float, float] = {}
    for o in outcomes:
        for series in o.result or []:
            for t, v in series.get("values", []):
                v = float(v)
                if math.isfinite(v):
                    out[float(t)] = pick(out[float(t)], v) if float(t) in out else v
    return out
