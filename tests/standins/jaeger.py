"""A local stand-in for Jaeger's HTTP query API (jaeger-query / all-in-one, port 16686): real HTTP on
loopback, the paths and JSON shapes Jaeger's UI reads.

- ``GET /api/traces?service=&start=&end=&limit=`` (start/end in Unix microseconds): like Jaeger, a trace
  matches when one of its spans belongs to the service and *starts* inside ``start``..``end``; the
  whole trace comes back. ``service`` is required; ``limit`` counts traces and defaults to 100;
  ``lookback`` is accepted and, as in Jaeger, does not change the search.
- ``GET /api/traces/<id>`` and ``GET /api/services``.

Every answer is Jaeger's envelope ``{"data", "total", "limit", "offset", "errors"}``; traces are
``{"traceID", "spans": [{"traceID", "spanID", "operationName", "references", "startTime", "duration",
"tags": [{"key", "type", "value"}], "logs": [{"timestamp", "fields"}], "processID", "warnings"}],
"processes": {"p1": {"serviceName", "tags"}}, "warnings"}``. Ids are printed as Jaeger prints them: a
trace id whose high 64 bits are zero has 16 hex digits.

Spans go in as :class:`~responder.evidence.traces.model.Span` objects (:meth:`JaegerStandin.add_spans`, mapped
the way the OpenTelemetry Collector's Jaeger translation maps them: ``span.kind``, ``otel.status_code``,
``error``, ``otel.status_description``, ``otel.scope.name``, events as logs with an ``event`` field) or
as Jaeger JSON traces (:meth:`JaegerStandin.add_jaeger_trace`). Tests read :attr:`requests` and inject
faults (:meth:`fail_next`, :meth:`stall_next`, :meth:`garble_next`, :meth:`reshape_next`).
"""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from responder.evidence.traces.model import Span
from tests.standins.loopback import FaultyServer

_JS_MAX_SAFE_INT = (1 << 53) - 1
_DEFAULT_LOOKBACK_US = 2 * 24 * 3600 * 1_000_000  # jaeger-query's default search lookback


def jaeger_trace_id(hex_id: str) -> str:
    """Jaeger's spelling of a trace id: 16 hex digits when the high half is zero, else 32."""
    value = int(hex_id, 16)
    return f"{value:016x}" if value >> 64 == 0 else f"{value:032x}"


def jaeger_tag(key: str, v: Any) -> dict:
    if isinstance(v, bool):
        return {"key": key, "type": "bool", "value": v}
    if isinstance(v, int):
        # Jaeger sends integers JavaScript cannot hold exactly as strings of digits.
        return {"key": key, "type": "int64", "value": v if abs(v) <= _JS_MAX_SAFE_INT else str(v)}
    if isinstance(v, float):
        return {"key": key, "type": "float64", "value": v}
    if isinstance(v, bytes):
        return {"key": key, "type": "binary", "value": base64.b64encode(v).decode()}
    if isinstance(v, (list, tuple, dict)):
        return {"key": key, "type": "string", "value": json.dumps(v)}  # the translation flattens these
    return {"key": key, "type": "string", "value": str(v)}


def jaeger_span(s: Span) -> tuple[dict, dict]:
    """One Span as (Jaeger span without processID, its process)."""
    tags = [jaeger_tag("otel.scope.name", s.scope)] if s.scope else []
    tags += [jaeger_tag(k, v) for k, v in s.attributes.items()]
    if s.kind != "unspecified":
        tags.append(jaeger_tag("span.kind", s.kind))
    if s.status != "unset":
        tags.append(jaeger_tag("otel.status_code", s.status.upper()))
    if s.status == "error":
        tags.append(jaeger_tag("error", True))
    if s.status_message:
        tags.append(jaeger_tag("otel.status_description", s.status_message))
    tid = jaeger_trace_id(s.trace_id)
    span = {"traceID": tid, "spanID": s.span_id, "flags": 1, "operationName": s.name,
            "references": ([{"refType": "CHILD_OF", "traceID": tid, "spanID": s.parent_span_id}]
                           if s.parent_span_id else []),
            "startTime": s.start_ns // 1000, "duration": (s.end_ns - s.start_ns) // 1000, "tags": tags,
            "logs": [{"timestamp": e.time_ns // 1000,
                      "fields": ([jaeger_tag("event", e.name)] if e.name else [])
                      + [jaeger_tag(k, v) for k, v in e.attributes.items()]} for e in s.events],
            "warnings": None}
    resource = s.resource or {"service.name": s.service}
    process = {"serviceName": s.service,
               "tags": [jaeger_tag(k, v) for k, v in resource.items() if k != "service.name"]}
    return span, process


def _envelope(data: Any, errors: list[dict] | None = None) -> dict:
    return {"data": data, "total": len(data) if isinstance(data, list) else 0, "limit": 0, "offset": 0,
            "errors": errors}


class JaegerStandin(FaultyServer):
    wrong_shape = {"data": "not a list"}

    def __init__(self) -> None:
        super().__init__()
        # trace id as an integer -> [(span without processID, process)]
        self.traces: dict[int, list[tuple[dict, dict]]] = {}

    # -- content

    def add_spans(self, spans: Iterable[Span]) -> None:
        for s in spans:
            self.traces.setdefault(int(s.trace_id, 16), []).append(jaeger_span(s))

    def add_jaeger_trace(self, trace: dict) -> None:
        """Hold a trace given in Jaeger's own JSON (as ``/api/traces`` would return it)."""
        for span in trace["spans"]:
            span = dict(span)
            process = span.pop("process", None) or trace["processes"][span.pop("processID")]
            span.pop("processID", None)
            self.traces.setdefault(int(span["traceID"], 16), []).append((span, process))

    # -- faults: FaultyServer's, with errors in Jaeger's envelope

    def error_response(self, status: int, message: str) -> web.Response:
        return web.json_response(_envelope(None, [{"code": status, "msg": message}]), status=status)

    # -- lifecycle

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_get("/api/traces", self._search)
        app.router.add_get("/api/traces/{trace_id}", self._trace)
        app.router.add_get("/api/services", self._services)
        return app

    # -- HTTP

    async def _search(self, request: web.Request) -> web.Response:
        q = request.query
        service = q.get("service", "")
        if not service:
            return _bad_request("parameter 'service' is required")
        now_us = int(time.time() * 1_000_000)
        try:
            end = int(q["end"]) if q.get("end") else now_us
        except ValueError as e:
            return _bad_request(f"unable to parse param 'end': {e}")
        try:
            start = int(q["start"]) if q.get("start") else now_us - _DEFAULT_LOOKBACK_US
        except ValueError as e:
            return _bad_request(f"unable to parse param 'start': {e}")
        try:
            limit = int(q["limit"]) if q.get("limit") else 100
        except ValueError as e:
            return _bad_request(f"unable to parse param 'limit': {e}")
        found = [(tid, entries) for tid, entries in self.traces.items()
                 if any(p["serviceName"] == service and start <= s["startTime"] <= end for s, p in entries)]
        found.sort(key=lambda t: max(s["startTime"] for s, _ in t[1]), reverse=True)
        return web.json_response(_envelope([_trace_json(entries) for _, entries in found[:limit]]))

    async def _trace(self, request: web.Request) -> web.Response:
        raw = request.match_info["trace_id"]
        try:
            if len(raw) > 32:
                raise ValueError("longer than 32 hex digits")
            entries = self.traces.get(int(raw, 16))
        except ValueError:
            return _bad_request(f"strconv.ParseUint: parsing {raw!r}: invalid syntax")
        if entries is None:
            return web.json_response(_envelope(None, [{"code": 404, "msg": "trace not found"}]), status=404)
        return web.json_response(_envelope([_trace_json(entries)]))

    async def _services(self, request: web.Request) -> web.Response:
        names = sorted({p["serviceName"] for entries in self.traces.values() for _, p in entries})
        return web.json_response(_envelope(names))


def _bad_request(msg: str) -> web.Response:
    return web.json_response(_envelope(None, [{"code": 400, "msg": msg}]), status=400)


def _trace_json(entries: list[tuple[dict, dict]]) -> dict:
    """A stored trace in Jaeger's JSON, processes numbered p1, p2, ... in order of first use."""
    keys: dict[str, str] = {}
    processes: dict[str, dict] = {}
    spans = []
    for span, process in entries:
        key = json.dumps(process, sort_keys=True)
        if key not in keys:
            keys[key] = f"p{len(keys) + 1}"
            processes[keys[key]] = process
        spans.append({**span, "processID": keys[key]})
    return {"traceID": spans[0]["traceID"], "spans": spans, "processes": processes, "warnings": None}
