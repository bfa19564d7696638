"""A local stand-in for Grafana Tempo's query API: real HTTP on loopback, the documented paths and shapes.

- ``GET /api/search?q=&start=&end=&limit=&spss=``: TraceQL search; the stand-in understands the one
  selector the responder sends, ``{ resource.service.name = "..." }`` (also ``.service.name``), and
  answers ``{"traces": [{"traceID", "rootServiceName", "rootTraceName", "startTimeUnixNano",
  "durationMs", "spanSets": [{"spans", "matched"}]}], "metrics": {...}}``. Like Tempo, a trace matches
  when one of its spans has the service and the trace's time range overlaps ``start``..``end``
  (Unix seconds), trace ids lose their leading zeros, ``limit`` defaults to 20 and ``spss`` to 3.
- ``GET /api/traces/<id>``: the trace as ``{"batches": [ResourceSpans]}``; ``GET /api/v2/traces/<id>``
  as ``{"trace": {"resourceSpans": [...]}}``. Both in Tempo's protobuf JSON: base64 ids, enum names,
  64-bit integers as strings, empty ``status: {}``. With ``start``/``end`` a trace outside them is 404.
- ``GET /api/echo``.

Spans go in as :class:`~responder.evidence.traces.model.Span` objects (:meth:`TempoStandin.add_spans`) or as
an OTLP/JSON export request with hex ids (:meth:`TempoStandin.add_otlp`). ``v2=False`` imitates a
Tempo from before the v2 trace endpoint. Tests read :attr:`TempoStandin.requests` and inject faults
(:meth:`fail_next`, :meth:`stall_next`, :meth:`garble_next`, :meth:`reshape_next`).
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from responder.evidence.traces.model import KINDS, STATUSES, Span
from tests.standins.loopback import FaultyServer

_SELECTOR = re.compile(r'\{\s*(?:resource)?\.service\.name\s*=\s*("(?:[^"\\]|\\.)*")\s*\}')
_KIND_NAMES = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
               "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"]
_STATUS_NAMES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]


def otlp_value(v: Any) -> dict:
    """A Python attribute value as an OTLP/JSON AnyValue (int64 as a string, bytes as base64,
    a dict as a kvlist, None as the empty value)."""
    if v is None:
        return {}
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [otlp_value(x) for x in v]}}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": otlp_attributes(v)}}
    if isinstance(v, bytes):
        return {"bytesValue": base64.b64encode(v).decode()}
    return {"stringValue": str(v)}


def otlp_attributes(attrs: dict[str, Any]) -> list[dict]:
    return [{"key": k, "value": otlp_value(v)} for k, v in attrs.items()]


def otlp_json(spans: Iterable[Span]) -> dict:
    """Spans as an OTLP/JSON ExportTraceServiceRequest (hex ids, integer enums), one ResourceSpans
    per distinct resource and one ScopeSpans per scope, as an SDK exporter would send them."""
    resources: dict[str, dict] = {}
    for s in spans:
        resource = s.resource or {"service.name": s.service}
        rkey = json.dumps(resource, sort_keys=True, default=str)
        rs = resources.setdefault(rkey, {"resource": {"attributes": otlp_attributes(resource)}, "scopeSpans": []})
        scope = next((ss for ss in rs["scopeSpans"] if ss["scope"]["name"] == s.scope), None)
        if scope is None:
            scope = {"scope": {"name": s.scope}, "spans": []}
            rs["scopeSpans"].append(scope)
        span = {"traceId": s.trace_id, "spanId": s.span_id, "parentSpanId": s.parent_span_id or "",
                "name": s.name, "kind": KINDS.index(s.kind), "startTimeUnixNano": str(s.start_ns),
                "endTimeUnixNano": str(s.end_ns), "attributes": otlp_attributes(s.attributes),
                "events": [{"timeUnixNano": str(e.time_ns), "name": e.name,
                            "attributes": otlp_attributes(e.attributes)} for e in s.events],
                "status": {"code": STATUSES.index(s.status)}}
        if s.status_message:
            span["status"]["message"] = s.status_message
        scope["spans"].append(span)
    return {"resourceSpans": list(resources.values())}


class TempoStandin(FaultyServer):
    wrong_shape = ["not", "tempo"]

    def __init__(self, *, v2: bool = True) -> None:
        super().__init__()
        self.v2 = v2
        # trace id (32 hex) -> [(resource, scope, span)], OTLP/JSON as given, hex ids
        self.traces: dict[str, list[tuple[dict, dict, dict]]] = {}
        self.delay_s = 0.0  # added to every answer, to observe client concurrency
        self.in_flight = 0
        self.max_in_flight = 0

    # -- content

    def add_spans(self, spans: Iterable[Span]) -> None:
        self.add_otlp(otlp_json(spans))

    def add_otlp(self, request: dict) -> None:
        """Index an OTLP/JSON ExportTraceServiceRequest (``{"resourceSpans": [...]}``, hex ids)."""
        for rs in request.get("resourceSpans", []):
            resource = rs.get("resource") or {}
            for ss in rs.get("scopeSpans", []):
                scope = ss.get("scope") or {}
                for span in ss.get("spans", []):
                    self.traces.setdefault(span["traceId"].lower(), []).append((resource, scope, span))

    # -- lifecycle

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._concurrency, self.middleware])
        app.router.add_get("/api/search", self._search)
        app.router.add_get("/api/traces/{trace_id}", self._trace_v1)
        if self.v2:
            app.router.add_get("/api/v2/traces/{trace_id}", self._trace_v2)
        app.router.add_get("/api/echo", _echo)
        return app

    # -- HTTP

    @web.middleware
    async def _concurrency(self, request: web.Request, handler) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def _search(self, request: web.Request) -> web.Response:
        q = request.query.get("q")
        if q is None:
            return web.Response(status=400, text="the stand-in only answers TraceQL searches (q=)")
        m = _SELECTOR.fullmatch(q.strip())
        if not m:
            return web.Response(status=400, text=f"invalid TraceQL query: parse error: {q}")
        try:
            # The responder quotes with JSON escapes, a subset of Go's string literals.
            service = json.loads(m.group(1))
            limit = int(request.query.get("limit", 20))
            spss = int(request.query.get("spss", 3))
            window = _window(request)
        except ValueError as e:
            return web.Response(status=400, text=f"invalid search request: {e}")
        results = []
        for trace_id, entries in self.traces.items():
            matched = [(r, s) for r, _, s in entries if _service(r) == service]
            if not matched or not _overlaps(entries, window):
                continue
            first = min(int(s["startTimeUnixNano"]) for _, _, s in entries)
            last = max(int(s["endTimeUnixNano"]) for _, _, s in entries)
            root = next(((r, s) for r, _, s in entries if not s.get("parentSpanId")), None)
            results.append({
                "traceID": trace_id.lstrip("0"),
                "rootServiceName": _service(root[0]) if root else "<root span not yet received>",
                **({"rootTraceName": root[1]["name"]} if root else {}),
                "startTimeUnixNano": str(first), "durationMs": (last - first) // 1_000_000,
                "spanSets": [{"spans": [{"spanID": s["spanId"].lower(), "name": s["name"],
                                         "startTimeUnixNano": str(s["startTimeUnixNano"]),
                                         "durationNanos": str(int(s["endTimeUnixNano"]) - int(s["startTimeUnixNano"])),
                                         "attributes": [{"key": "service.name",
                                                         "value": {"stringValue": service}}]}
                                        for _, s in matched[:spss]],
                              "matched": len(matched)}]})
        results.sort(key=lambda t: int(t["startTimeUnixNano"]), reverse=True)
        body: dict[str, Any] = {"metrics": {"inspectedTraces": len(self.traces), "inspectedBytes": "4096",
                                            "totalBlocks": 1, "completedJobs": 1, "totalJobs": 1}}
        if results:  # protobuf JSON leaves out an empty list
            body["traces"] = results[:limit]
        return web.json_response(body)

    def _find(self, request: web.Request) -> tuple[list | None, web.Response | None]:
        raw = request.match_info["trace_id"]
        try:
            if len(raw) > 32:
                raise ValueError
            int(raw, 16)
            window = _window(request)
        except ValueError:
            return None, web.Response(status=400, text=f"invalid trace id or time range: {raw}")
        entries = self.traces.get(raw.lower().zfill(32))
        if entries is None or not _overlaps(entries, window):
            return None, web.Response(status=404, text="trace not found")
        return entries, None

    async def _trace_v1(self, request: web.Request) -> web.Response:
        entries, problem = self._find(request)
        return problem or web.json_response({"batches": _batches(entries)})

    async def _trace_v2(self, request: web.Request) -> web.Response:
        entries, problem = self._find(request)
        return problem or web.json_response({"trace": {"resourceSpans": _batches(entries)},
                                             "metrics": {"inspectedBytes": "4096"}})


async def _echo(request: web.Request) -> web.Response:
    return web.Response(text="echo")


def _window(request: web.Request) -> tuple[int, int] | None:
    start, end = request.query.get("start"), request.query.get("end")
    if start is None or end is None:
        return None
    return int(start) * 1_000_000_000, int(end) * 1_000_000_000


def _overlaps(entries: list[tuple[dict, dict, dict]], window: tuple[int, int] | None) -> bool:
    if window is None:
        return True
    first = min(int(s["startTimeUnixNano"]) for _, _, s in entries)
    last = max(int(s["endTimeUnixNano"]) for _, _, s in entries)
    return last >= window[0] and first <= window[1]


def _service(resource: dict) -> str | None:
    for kv in resource.get("attributes", []):
        if kv["key"] == "service.name":
            return kv["value"].get("stringValue")
    return None


def _batches(entries: list[tuple[dict, dict, dict]]) -> list[dict]:
    """Regroup a trace's spans by resource and scope, in Tempo's protobuf JSON."""
    out: list[dict] = []
    resources: dict[int, dict] = {}
    scopes: dict[tuple[int, int], dict] = {}
    for resource, scope, span in entries:
        rs = resources.get(id(resource))
        if rs is None:
            rs = resources[id(resource)] = {"resource": {"attributes": _tempo_attrs(resource.get("attributes"))},
                                            "scopeSpans": []}
            out.append(rs)
        ss = scopes.get((id(resource), id(scope)))
        if ss is None:
            ss = scopes[(id(resource), id(scope))] = {
                "scope": {k: v for k, v in scope.items() if v not in ("", None)}, "spans": []}
            rs["scopeSpans"].append(ss)
        ss["spans"].append(_tempo_span(span))
    return out


def _b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def _tempo_span(span: dict) -> dict:
    out: dict[str, Any] = {"traceId": _b64(span["traceId"]), "spanId": _b64(span["spanId"])}
    if span.get("parentSpanId"):
        out["parentSpanId"] = _b64(span["parentSpanId"])
    out["name"] = span.get("name", "")
    kind = span.get("kind", 0)
    kind = _KIND_NAMES[kind] if isinstance(kind, int) else kind
    if kind != "SPAN_KIND_UNSPECIFIED":  # protobuf JSON leaves out default values
        out["kind"] = kind
    out["startTimeUnixNano"] = str(span["startTimeUnixNano"])
    out["endTimeUnixNano"] = str(span["endTimeUnixNano"])
    if span.get("attributes"):
        out["attributes"] = _tempo_attrs(span["attributes"])
    if span.get("events"):
        out["events"] = [{"timeUnixNano": str(e["timeUnixNano"]), "name": e.get("name", ""),
                          **({"attributes": _tempo_attrs(e["attributes"])} if e.get("attributes") else {})}
                         for e in span["events"]]
    status: dict[str, Any] = {}
    code = (span.get("status") or {}).get("code", 0)
    code = _STATUS_NAMES[code] if isinstance(code, int) else code
    if code != "STATUS_CODE_UNSET":
        status["code"] = code
    if (span.get("status") or {}).get("message"):
        status["message"] = span["status"]["message"]
    out["status"] = status
    return out


def _tempo_attrs(attrs: list[dict] | None) -> list[dict]:
    return [{"key": kv["key"], "value": _tempo_value(kv.get("value") or {})} for kv in attrs or []]


def _tempo_value(v: dict) -> dict:
    if "intValue" in v:
        return {"intValue": str(v["intValue"])}
    if "arrayValue" in v:
        return {"arrayValue": {"values": [_tempo_value(x) for x in v["arrayValue"].get("values", [])]}}
    if "kvlistValue" in v:
        return {"kvlistValue": {"values": _tempo_attrs(v["kvlistValue"].get("values"))}}
    return dict(v)
