"""Typed views of the evidence an incident stores: Prometheus queries, trace dependencies, windows.

The gather stage stores evidence as JSON (what ``GET /api/incidents/{id}`` returns); what reads it
back (the renderers) reads these types, never string keys. Reading is lenient: an incident stored
by an older version, or a value a client could have shaped oddly, gives a field that is absent
(None, empty) rather than an exception, so a page always renders and says what is missing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# -- lenient readers of stored JSON ---------------------------------------------------------------

def as_dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def as_dicts(value: Any) -> list[dict[str, Any]]:
    """The mappings of a list, skipping anything else."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def as_float(value: Any) -> float | None:
    """A finite number, from a number or a numeric string (Prometheus sends values as strings)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def as_str(value: Any) -> str | None:
    return None if value is None else str(value)


# -- shared shapes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """A time window in Unix seconds, and how many spans were read in it (trace windows)."""

    start: float | None = None
    end: float | None = None
    spans: float | None = None

    @property
    def seconds(self) -> float | None:
        if self.start is not None and self.end is not None and self.end >= self.start > 0:
            return self.end - self.start
        return None

    @classmethod
    def read(cls, value: Any) -> Window | None:
        d = as_dict(value)
        if d is None:
            return None
        return cls(as_float(d.get("start")), as_float(d.get("end")), as_float(d.get("spans")))


# -- Prometheus -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    mean: float | None = None
    max: float | None = None

    @classmethod
    def read(cls, value: Any) -> Stats:
        d = as_dict(value) or {}
        return cls(as_float(d.get("mean")), as_float(d.get("max")))


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # sorted by time; unreadable points dropped

    @classmethod
    def read(cls, value: dict[str, Any]) -> Series:
        points = []
        raw = value.get("points")
        for p in raw if isinstance(raw, list) else []:
            if isinstance(p, (list, tuple)) and len(p) == 2:
                t, v = as_float(p[0]), as_float(p[1])
                if t is not None and v is not None:
                    points.append((t, v))
        labels = {str(k): str(v) for k, v in (as_dict(value.get("labels")) or {}).items()}
        return cls(labels, sorted(points))


@dataclass(frozen=True)
class QueryResult:
    """One playbook query over both windows: its statistics, series, links and problems."""

    name: str
    title: str
    expr: str
    kind: str  # burn_rate | sli | signal | onset
    unit: str = ""
    baseline: Stats = field(default_factory=Stats)
    incident: Stats = field(default_factory=Stats)
    series: list[Series] = field(default_factory=list)
    link: str | None = None
    grafana_link: str | None = None
    error: str | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        return self.title or self.name or self.expr or "query"

    @classmethod
    def read(cls, d: dict[str, Any]) -> QueryResult:
        return cls(name=str(d.get("name") or ""), title=str(d.get("title") or ""), expr=str(d.get("expr") or ""),
                   kind=str(d.get("kind") or ""), unit=str(d.get("unit") or ""),
                   baseline=Stats.read(d.get("baseline")), incident=Stats.read(d.get("incident")),
                   series=[Series.read(s) for s in as_dicts(d.get("series"))],
                   link=as_str(d.get("link")), grafana_link=as_str(d.get("grafana_link")),
                   error=as_str(d.get("error")), note=as_str(d.get("note")))


@dataclass(frozen=True)
class PrometheusEvidence:
    reachable: bool
    error: str | None = None
    attempts: int | None = None
    baseline: Window | None = None
    incident: Window | None = None
    queries: list[QueryResult] = field(default_factory=list)

    @classmethod
    def read(cls, value: Any) -> PrometheusEvidence | None:
        d = as_dict(value)
        if d is None:
            return None
        attempts = as_float(d.get("attempts"))
        return cls(reachable=d.get("reachable", True) is not False, error=as_str(d.get("error")),
                   attempts=int(attempts) if attempts is not None else None,
                   baseline=Window.read(d.get("baseline")), incident=Window.read(d.get("incident")),
                   queries=[QueryResult.read(q) for q in as_dicts(d.get("queries"))])


# -- traces ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DependencyWindow:
    """A dependency's calls in one window (None where the stored value is missing or unreadable)."""

    count: float | None = None
    errors: float | None = None
    error_types: dict[str, float] = field(default_factory=dict)
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    ttft_p90_ms: float | None = None
    retries: float | None = None
    exemplar_trace_ids: list[str] = field(default_factory=list)
    peers: dict[str, float] = field(default_factory=dict)  # "address:port" -> calls, most used first

    @classmethod
    def read(cls, value: Any) -> DependencyWindow | None:
        d = as_dict(value)
        if d is None:
            return None
        types = {str(k): f for k, v in (as_dict(d.get("error_types")) or {}).items() if (f := as_float(v)) is not None}
        return cls(count=as_float(d.get("count")), errors=as_float(d.get("errors")),
                   error_types=dict(sorted(types.items(), key=lambda kv: -kv[1])),
                   p50_ms=as_float(d.get("p50_ms")), p90_ms=as_float(d.get("p90_ms")), p99_ms=as_float(d.get("p99_ms")),
                   ttft_p90_ms=as_float(d.get("ttft_p90_ms")), retries=as_float(d.get("retries")),
                   exemplar_trace_ids=[str(x) for x in d.get("exemplar_trace_ids") or [] if x],
                   peers={str(k): f for k, v in (as_dict(d.get("peers")) or {}).items()
                          if (f := as_float(v)) is not None})


@dataclass(frozen=True)
class Dependency:
    """What the service called (``kind``: llm, db, http, rpc, server …), baseline vs incident;
    a side is None when the dependency made no call in that window."""

    kind: str
    name: str
    baseline: DependencyWindow | None
    incident: DependencyWindow | None

    @property
    def p90_change(self) -> float:
        """How far its p90 moved, as a share of the larger of the two (0 when either is unknown)."""
        b = self.baseline.p90_ms if self.baseline else None
        i = self.incident.p90_ms if self.incident else None
        if b is None or i is None or max(abs(b), abs(i)) == 0:
            return 0.0
        return abs(i - b) / max(abs(b), abs(i))

    @classmethod
    def read(cls, d: dict[str, Any]) -> Dependency:
        return cls(str(d.get("kind") or "?"), str(d.get("name") or "?"),
                   DependencyWindow.read(d.get("baseline")), DependencyWindow.read(d.get("incident")))


@dataclass(frozen=True)
class Exemplar:
    trace_id: str
    why: str
    url: str | None = None

    @classmethod
    def read(cls, d: dict[str, Any]) -> Exemplar:
        return cls(str(d.get("trace_id") or "?"), str(d.get("why") or ""), as_str(d.get("url")))


@dataclass(frozen=True)
class TraceEvidence:
    backend: str
    service: str
    reachable: bool
    error: str | None = None
    baseline: Window | None = None
    incident: Window | None = None
    dependencies: list[Dependency] = field(default_factory=list)  # most changed first
    exemplars: list[Exemplar] = field(default_factory=list)
    # The service's own requests over time: {"start", "end", "requests", "errors", "p90_ms"}
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spans(self) -> float:
        """Spans read over both windows."""
        return sum((w.spans or 0.0) for w in (self.baseline, self.incident) if w is not None)

    @classmethod
    def read(cls, value: Any) -> TraceEvidence | None:
        d = as_dict(value)
        if d is None:
            return None
        return cls(backend=str(d.get("backend") or "trace"), service=str(d.get("service") or ""),
                   reachable=d.get("reachable", True) is not False, error=as_str(d.get("error")),
                   baseline=Window.read(d.get("baseline")), incident=Window.read(d.get("incident")),
                   dependencies=[Dependency.read(x) for x in as_dicts(d.get("dependencies"))],
                   exemplars=[Exemplar.read(x) for x in as_dicts(d.get("exemplars"))],
                   timeline=[x for x in as_dicts(d.get("timeline"))
                             if all(as_float(x.get(k)) is not None for k in ("start", "end", "requests", "p90_ms"))])
