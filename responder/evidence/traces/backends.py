"""Where trace evidence comes from: the built-in span store, Grafana Tempo, or Jaeger, behind one interface.

Every back-end answers one question, :meth:`TraceBackend.find_spans`: the spans a service emitted
that overlap a time window, as :class:`~responder.evidence.traces.model.Span` objects. Tempo and Jaeger are
read through their HTTP query APIs (Tempo: TraceQL search, then each trace by id; Jaeger:
``/api/traces``); both search for *traces*, so the number of traces read per window is bounded and
a log line says when that bound cut the answer short.

A back-end that cannot answer raises :class:`TraceBackendError`, whose message names the back-end,
its URL and what went wrong; nothing else escapes, so the pipeline can report "traces unavailable"
and carry on.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiohttp

from responder.config import ConfigError, Settings
from responder.evidence.traces.model import KINDS, Span, SpanEvent
from responder.evidence.traces.otlp import spans_from_json_dict

if TYPE_CHECKING:
    from responder.evidence.traces.store import SpanStore

log = logging.getLogger(__name__)

DEFAULT_SPAN_LIMIT = 5000
# Traces read per window from Tempo or Jaeger. Each Tempo trace is one more request, so this is
# the cost bound; a few hundred traces is plenty to compare a dependency before and during a burn.
DEFAULT_MAX_TRACES = 200
DEFAULT_CONCURRENCY = 8  # Tempo trace-by-id requests in flight at once
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # one answer; a runaway trace should not take the responder down
# Jaeger finds traces by span *start* time; looking back this much further also finds the spans
# that began before the window and were still running in it.
JAEGER_SEARCH_SLACK_S = 60.0
# Tempo only reads the blocks that cover the start/end it is given, so a trace fetch names the
# window, widened because blocks are cut by ingest time, not span time.
TEMPO_FETCH_SLACK_S = 300.0

_TRUNCATED_NOTE = 'note="more traces matched than were read; the evidence covers a sample"'
_TEMPO_V2_TRACE = "/api/v2/traces/"
_TEMPO_V1_TRACE = "/api/traces/"


class TraceBackendError(Exception):
    """The trace back-end was unreachable or gave an answer we cannot use; the message says which and why."""


@runtime_checkable
class TraceBackend(Protocol):
    name: str

    async def find_spans(self, service: str, start: float, end: float,
                         limit: int = DEFAULT_SPAN_LIMIT) -> list[Span]:
        """Spans of ``service`` overlapping ``[start, end]`` (Unix seconds), at most ``limit``.

        Raises TraceBackendError when the back-end cannot answer, ValueError when ``end < start``.
        """
        ...

    async def close(self) -> None:
        ...


# -- built-in store


class BuiltinBackend:
    """The responder's own OTLP receiver store (responder.evidence.traces.store.SpanStore)."""

    name = "builtin"

    def __init__(self, store: SpanStore) -> None:
        self.store = store

    async def find_spans(self, service: str, start: float, end: float,
                         limit: int = DEFAULT_SPAN_LIMIT) -> list[Span]:
        start_ns, end_ns = _window_ns(start, end)
        try:
            # The store takes a lock and walks its index; keep that off the event loop.
            return await asyncio.to_thread(self.store.query, service, start_ns, end_ns, limit)
        except Exception as e:  # a store bug must not take the investigation down with it
            raise TraceBackendError(f"builtin span store: query failed: {e!r}") from e

    async def close(self) -> None:
        pass


# -- Tempo


class TempoBackend:
    """Grafana Tempo's query API: ``GET /api/search`` (TraceQL), then ``GET /api/v2/traces/<id>``.

    Tempo releases without the v2 trace endpoint are detected on the first trace and read
    through ``/api/traces/<id>`` from then on.
    """

    name = "tempo"

    def __init__(self, url: str, timeout_s: float = 10.0, headers: dict[str, str] | None = None, *,
                 max_traces: int = DEFAULT_MAX_TRACES, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        if max_traces < 1 or concurrency < 1:
            raise ValueError("TempoBackend: max_traces and concurrency must be at least 1")
        self.url = url.rstrip("/")
        self.max_traces = max_traces
        self.concurrency = concurrency
        self._api = _JsonApi(self.name, self.url, timeout_s, {"Accept": "application/json", **(headers or {})})
        self._trace_path = _TEMPO_V2_TRACE

    async def find_spans(self, service: str, start: float, end: float,
                         limit: int = DEFAULT_SPAN_LIMIT) -> list[Span]:
        start_ns, end_ns = _window_ns(start, end)
        start_s = math.floor(start)
        end_s = max(math.ceil(end), start_s + 1)  # whole seconds; Tempo wants end after start
        trace_ids = await self._search(service, start_s, end_s)
        fetch_window = {"start": str(math.floor(start - TEMPO_FETCH_SLACK_S)),
                        "end": str(math.ceil(end + TEMPO_FETCH_SLACK_S))}
        gate = asyncio.Semaphore(self.concurrency)

        async def fetch(trace_id: str) -> list[Span]:
            async with gate:
                return await self._fetch_trace(trace_id, fetch_window)

        try:
            async with asyncio.TaskGroup() as tg:  # the first failure cancels the rest
                tasks = [tg.create_task(fetch(t)) for t in trace_ids]
        except BaseExceptionGroup as eg:
            raise _first_backend_error(eg) from None
        spans = _select(service, start_ns, end_ns, (s for t in tasks for s in t.result()))
        return _bounded(spans, limit, self.name, service)

    async def _search(self, service: str, start_s: int, end_s: int) -> list[str]:
        params = {"q": traceql_service_selector(service), "start": str(start_s), "end": str(end_s),
                  "limit": str(self.max_traces),
                  "spss": "1"}  # the matched spans are not used (whole traces are fetched); keep the answer small
        data = await self._api.get_json("/api/search", params)
        # An empty result may leave out "traces" (protobuf JSON drops empty lists), never "metrics".
        if not isinstance(data, dict) or not isinstance(data.get("traces") or [], list) or (
                "traces" not in data and "metrics" not in data):
            raise self._api.shape_error("/api/search", "expected an object with a 'traces' list")
        results = data.get("traces") or []
        ids: list[str] = []
        for item in results:
            trace_id = _hex_id(item.get("traceID") if isinstance(item, dict) else None, 32)
            if trace_id is None:
                raise self._api.shape_error("/api/search", f"a result has no usable traceID: {item!r:.120}")
            if trace_id not in ids:
                ids.append(trace_id)
        if len(results) >= self.max_traces:
            log.warning("event=trace_search_truncated backend=tempo service=%s traces=%d max_traces=%d %s",
                        json.dumps(service), len(ids), self.max_traces, _TRUNCATED_NOTE)
        return ids

    async def _fetch_trace(self, trace_id: str, window: dict[str, str]) -> list[Span]:
        path = self._trace_path + trace_id
        data = await self._api.get_json(path, window, missing_ok=True)
        if data is None and self._trace_path == _TEMPO_V2_TRACE:
            # Either the trace is gone or this Tempo predates the v2 endpoint; v1 tells which.
            data = await self._api.get_json(_TEMPO_V1_TRACE + trace_id, window, missing_ok=True)
            if data is not None:
                path = _TEMPO_V1_TRACE + trace_id
                if self._trace_path != _TEMPO_V1_TRACE:
                    log.info("event=tempo_v1_trace_api backend=tempo url=%s", self.url)
                self._trace_path = _TEMPO_V1_TRACE
        if data is None:
            # Found by search, gone by the time we asked (retention, compaction): nothing to add.
            log.debug("event=trace_not_found backend=tempo trace_id=%s", trace_id)
            return []
        if not isinstance(data, dict):
            raise self._api.shape_error(path, "expected a trace object")
        if "PARTIAL" in (str(data.get("status", "")).upper(), str(data.get("traceType", "")).upper()):
            # Tempo cut a trace over its size limit; what came back is still worth reading.
            log.warning("event=trace_partial backend=tempo trace_id=%s message=%s", trace_id,
                        json.dumps(str(data.get("message", ""))))
        try:
            return spans_from_json_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise self._api.shape_error(path, f"trace {trace_id} could not be decoded: {e}") from e

    async def close(self) -> None:
        await self._api.close()


def traceql_service_selector(service: str) -> str:
    """``{ resource.service.name = "<service>" }`` with the name quoted as a TraceQL string.

    TraceQL strings are Go string literals; JSON's escaping (``\\"``, ``\\\\``, ``\\n``, ``\\u00XX``)
    is a subset of Go's, so a JSON-quoted name is always read back exactly.
    """
    return "{ resource.service.name = " + json.dumps(service, ensure_ascii=False) + " }"


# -- Jaeger


class JaegerBackend:
    """Jaeger's query API: ``GET /api/traces?service=&start=&end=`` (microseconds)."""

    name = "jaeger"

    def __init__(self, url: str, timeout_s: float = 10.0, headers: dict[str, str] | None = None, *,
                 max_traces: int = DEFAULT_MAX_TRACES, search_slack_s: float = JAEGER_SEARCH_SLACK_S) -> None:
        if max_traces < 1:
            raise ValueError("JaegerBackend: max_traces must be at least 1")
        self.url = url.rstrip("/")
        self.max_traces = max_traces
        self.search_slack_s = search_slack_s
        self._api = _JsonApi(self.name, self.url, timeout_s, {"Accept": "application/json", **(headers or {})})

    async def find_spans(self, service: str, start: float, end: float,
                         limit: int = DEFAULT_SPAN_LIMIT) -> list[Span]:
        start_ns, end_ns = _window_ns(start, end)
        params = {"service": service, "start": str(math.floor((start - self.search_slack_s) * 1e6)),
                  "end": str(math.ceil(end * 1e6)), "limit": str(self.max_traces),
                  "lookback": "custom"}  # what Jaeger's UI sends with explicit start/end
        path = "/api/traces"
        data = await self._api.get_json(path, params)
        if not isinstance(data, dict) or not isinstance(data.get("data") or [], list):
            raise self._api.shape_error(path, "expected an object with a 'data' list")
        if data.get("errors"):
            # Jaeger answers 200 with errors when some traces could not be read; use the rest.
            log.warning("event=trace_backend_partial backend=jaeger service=%s errors=%s",
                        json.dumps(service), json.dumps(data["errors"])[:300])
        traces = data.get("data") or []
        if len(traces) >= self.max_traces:
            log.warning("event=trace_search_truncated backend=jaeger service=%s traces=%d max_traces=%d %s",
                        json.dumps(service), len(traces), self.max_traces, _TRUNCATED_NOTE)
        decoded: list[Span] = []
        for trace in traces:
            try:
                decoded.extend(spans_from_jaeger_trace(trace))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise self._api.shape_error(path, f"a trace could not be decoded: {e}") from e
        return _bounded(_select(service, start_ns, end_ns, decoded), limit, self.name, service)

    async def close(self) -> None:
        await self._api.close()


# Tags Jaeger's OTLP translation adds for span fields; they become Span fields, not attributes.
_JAEGER_FIELD_TAGS = frozenset({
    "span.kind", "otel.status_code", "otel.status_description", "otel.scope.name", "otel.scope.version",
    "otel.library.name", "otel.library.version", "w3c.tracestate", "internal.span.format",
})


def spans_from_jaeger_trace(trace: dict[str, Any]) -> list[Span]:
    """Decode one trace of Jaeger's JSON (``{"traceID", "spans", "processes"}``) into Spans.

    Jaeger's OTLP translation is undone: ``span.kind`` gives the kind, ``otel.status_code`` (or an
    OpenTracing ``error=true``) the status, ``otel.status_description`` its message,
    ``otel.scope.name`` the scope; the remaining tags are attributes with their declared types;
    logs are events named by their ``event`` field; the process is the service and resource.
    Raises ValueError when the shape is not Jaeger's.
    """
    if not isinstance(trace, dict) or not isinstance(trace.get("spans"), list):
        raise ValueError("a trace without a 'spans' list")
    processes = trace.get("processes") or {}
    if not isinstance(processes, dict):
        raise ValueError("'processes' is not an object")
    out = []
    for raw in trace["spans"]:
        if not isinstance(raw, dict):
            raise ValueError(f"a span is not an object: {raw!r:.80}")
        trace_id = _hex_id(raw.get("traceID"), 32)
        span_id = _hex_id(raw.get("spanID"), 16)
        if trace_id is None or span_id is None:
            raise ValueError(f"span ids are not hex: traceID={raw.get('traceID')!r} spanID={raw.get('spanID')!r}")
        process = raw.get("process") or processes.get(raw.get("processID")) or {}
        service = process.get("serviceName") or "unknown_service"
        resource = {"service.name": service, **_jaeger_tags(process.get("tags"))}
        tags = _jaeger_tags(raw.get("tags"))
        kind = str(tags.get("span.kind", "")).lower()
        kind = kind if kind in KINDS else "unspecified"
        code = str(tags.get("otel.status_code", "")).upper()
        error_tag = tags.get("error")
        if code == "ERROR" or (not code and error_tag in (True, "true")):
            status = "error"
        elif code == "OK":
            status = "ok"
        else:
            status = "unset"
        if error_tag in (True, "true", False, "false"):
            tags.pop("error")  # the status marker, not an attribute of the call
        parent = None
        for ref in raw.get("references") or []:
            # The parent is the first CHILD_OF in the same trace; FOLLOWS_FROM are OTLP links.
            if ref.get("refType") == "CHILD_OF" and _hex_id(ref.get("traceID"), 32) == trace_id:
                parent = _hex_id(ref.get("spanID"), 16)
                break
        start_us = int(raw["startTime"])
        duration_us = int(raw.get("duration") or 0)
        events = []
        for entry in raw.get("logs") or []:
            fields = _jaeger_tags(entry.get("fields"))
            name = fields.pop("event", "")
            events.append(SpanEvent(name=str(name), time_ns=int(entry["timestamp"]) * 1000, attributes=fields))
        out.append(Span(
            trace_id=trace_id, span_id=span_id, parent_span_id=parent, service=service,
            name=str(raw.get("operationName") or ""), kind=kind,
            start_ns=start_us * 1000, end_ns=(start_us + duration_us) * 1000,
            status=status, status_message=str(tags.get("otel.status_description") or ""),
            attributes={k: v for k, v in tags.items() if k not in _JAEGER_FIELD_TAGS},
            events=events, resource=resource,
            scope=str(tags.get("otel.scope.name") or tags.get("otel.library.name") or "")))
    return out


def _jaeger_tags(tags: Any) -> dict[str, Any]:
    """Jaeger ``[{"key", "type", "value"}]`` to a dict with the declared types restored."""
    out: dict[str, Any] = {}
    for tag in tags or []:
        key, vtype, value = tag["key"], str(tag.get("type") or "string").lower(), tag.get("value")
        if vtype == "int64":
            value = int(value)  # beyond 2**53 Jaeger sends the digits as a string
        elif vtype == "float64":
            value = float(value)
        elif vtype == "bool":
            value = value if isinstance(value, bool) else str(value).lower() == "true"
        elif vtype == "binary":
            # Go's JSON gives []byte as base64; the span model keeps bytes as hex.
            try:
                value = base64.b64decode(value, validate=True).hex()
            except (binascii.Error, TypeError) as e:
                raise ValueError(f"tag {key!r}: binary value is not base64") from e
        elif value is not None and not isinstance(value, str):
            value = str(value)
        out[key] = value
    return out


# -- choosing one


def backend_from_settings(settings: Settings, store: SpanStore) -> TraceBackend:
    """The back-end ``settings.trace_backend`` names: builtin (``store``), tempo or jaeger."""
    kind = settings.trace_backend
    if kind == "builtin":
        return BuiltinBackend(store)
    if kind in ("tempo", "jaeger"):
        url = getattr(settings, f"{kind}_url", None)
        if not url:
            raise ConfigError(f"{kind}_url: required when trace_backend is {kind}")
        return TempoBackend(url) if kind == "tempo" else JaegerBackend(url)
    raise ConfigError(f"trace_backend: {kind!r}; expected builtin, tempo or jaeger")


# -- shared plumbing


class _JsonApi:
    """GETs JSON from one back-end; every way that can fail becomes a TraceBackendError naming it."""

    def __init__(self, backend: str, base_url: str, timeout_s: float, headers: dict[str, str]) -> None:
        self.backend, self.base_url, self.timeout_s, self.headers = backend, base_url, timeout_s, headers
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self.headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def error(self, path: str, what: str) -> TraceBackendError:
        return TraceBackendError(f"{self.backend} at {self.base_url}: GET {path} {what}")

    def shape_error(self, path: str, what: str) -> TraceBackendError:
        return self.error(path, f"answered with an unexpected shape: {what}")

    async def get_json(self, path: str, params: dict[str, str] | None = None, *,
                       missing_ok: bool = False) -> Any:
        """The decoded JSON body; None for a 404 when ``missing_ok``."""
        url = self.base_url + path
        try:
            async with self._client().get(url, params=params,
                                          timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise self.error(path, f"answered with more than {MAX_RESPONSE_BYTES >> 20} MiB")
                status = resp.status
        except TimeoutError:
            raise self.error(path, f"got no answer within {self.timeout_s:g}s") from None
        except aiohttp.ClientConnectorError as e:
            reason = e.os_error.strerror if e.os_error and e.os_error.strerror else str(e)
            raise self.error(path, f"could not connect: {reason}; is {self.backend}_url right?") from None
        except aiohttp.ClientError as e:
            raise self.error(path, f"failed: {type(e).__name__}: {e}") from None
        if status == 404 and missing_ok:
            return None
        if not 200 <= status < 300:
            hint = " (check the credentials in the request headers)" if status in (401, 403) else ""
            raise self.error(path, f"answered HTTP {status}{hint}: {_error_text(bytes(body))}")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self.error(path, f"answered with a body that is not JSON: {_snippet(bytes(body))!r}") from None


def _error_text(body: bytes) -> str:
    """What an error answer says: Jaeger's ``errors[].msg``, a JSON ``error``/``message``, or the text."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _snippet(body) or "(empty body)"
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in errors)[:300]
        for key in ("error", "message", "msg"):
            if isinstance(data.get(key), str):
                return data[key][:300]
    return _snippet(body)


def _snippet(body: bytes, n: int = 200) -> str:
    return " ".join(body[:n * 4].decode("utf-8", "replace").split())[:n]


def _first_backend_error(eg: BaseExceptionGroup) -> BaseException:
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first_backend_error(e)
        if isinstance(e, TraceBackendError):
            return e
    return eg


def _window_ns(start: float, end: float) -> tuple[int, int]:
    if end < start:
        raise ValueError(f"window ends before it starts: start={start} end={end}")
    return round(start * 1e9), round(end * 1e9)


def _hex_id(value: Any, digits: int) -> str | None:
    """Lowercase hex, left-padded to ``digits`` (Tempo trims leading zeros; Jaeger may send 64-bit ids)."""
    if not isinstance(value, str) or not value or len(value) > digits:
        return None
    try:
        int(value, 16)
    except ValueError:
        return None
    return value.lower().zfill(digits)


def _select(service: str, start_ns: int, end_ns: int, spans: Any) -> list[Span]:
    """Spans of ``service`` overlapping the window, each once (a trace can repeat a span across batches)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for s in spans:
        key = (s.trace_id, s.span_id)
        if (s.service == service and s.start_ns <= end_ns and max(s.end_ns, s.start_ns) >= start_ns
                and key not in seen):
            seen.add(key)
            out.append(s)
    return out


def _bounded(spans: list[Span], limit: int, backend: str, service: str) -> list[Span]:
    if len(spans) > limit:
        log.warning("event=trace_spans_truncated backend=%s service=%s spans=%d limit=%d",
                    backend, json.dumps(service), len(spans), limit)
        return spans[:limit]
    return spans
