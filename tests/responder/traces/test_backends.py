"""Trace back-ends: the built-in store over a real SpanStore, Tempo and Jaeger against their stand-ins
over loopback sockets. The same spans go into each and must come back the same, to the back-end's
time precision; windows, services, limits and failures behave alike."""
from __future__ import annotations

import logging
import socket

import pytest

from responder.config import ConfigError, Settings
from responder.evidence.traces.backends import (
    BuiltinBackend,
    JaegerBackend,
    TempoBackend,
    TraceBackend,
    TraceBackendError,
    backend_from_settings,
    traceql_service_selector,
)
from responder.evidence.traces.model import Span, SpanEvent
from responder.evidence.traces.store import SpanStore
from tests.standins.jaeger import JaegerStandin
from tests.standins.tempo import TempoStandin

BASE = 1_732_700_000  # Unix seconds
WINDOW = (BASE + 600.0, BASE + 900.0)
S = 1_000_000_000
SERVICE = "chat-api"
RESOURCE = {"service.name": SERVICE, "deployment.environment.name": "lab", "k8s.pod.name": "chat-api-7d9f"}

T1 = "4bf92f3577b34da6a3ce929d0e0e4736"  # in the window: server, GenAI client, db, policy (+ another service)
T2 = "00000000000000004a5f8e3c2d1b0a99"  # high half zero: Tempo trims it, Jaeger prints 16 digits; runs past the end
T3 = "d3adb33fd3adb33fd3adb33fd3adb33f"  # started before the window, still running in it
T4 = "11111111111111111111111111111111"  # over before the window
T5 = "55555555555555555555555555555555"  # after the window
T6 = "66666666666666666666666666666666"  # another service, in the window


def _span(trace_id, span_id, name, kind, start_ns, dur_ns, *, parent=None, service=SERVICE, status="unset",
          message="", attributes=None, events=None, scope="opentelemetry.instrumentation.aiohttp_server"):
    resource = RESOURCE if service == SERVICE else {"service.name": service}
    return Span(trace_id, span_id, parent, service, name, kind, start_ns, start_ns + dur_ns, status, message,
                attributes or {}, events or [], dict(resource), scope)


def fixture_spans() -> list[Span]:
    t1 = (BASE + 700) * S + 123_456_789  # sub-microsecond parts on purpose: Jaeger keeps microseconds
    genai = _span(T1, "b7ad6b7169203331", "chat gpt-4o-mini", "client", t1 + 2_000_417, 1_850_000_333,
                  parent="00f067aa0ba902b7", status="error", message="Too Many Requests",
                  scope="opentelemetry.instrumentation.openai_v2",
                  attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                              "gen_ai.request.model": "gpt-4o-mini", "server.address": "api.openai.com",
                              "server.port": 443, "error.type": "429", "gen_ai.request.temperature": 0.2,
                              "gen_ai.request.stream": True, "gen_ai.usage.input_tokens": 812},
                  events=[SpanEvent("exception", t1 + 1_852_000_999,
                                    {"exception.type": "openai.RateLimitError",
                                     "exception.message": "Rate limit reached for gpt-4o-mini",
                                     "exception.escaped": False})])
    t2 = (BASE + 880) * S + 5_005
    return [
        _span(T1, "00f067aa0ba902b7", "POST /v1/chat", "server", t1, 2_500_000_000, status="error",
              message="upstream rate limited",
              attributes={"http.request.method": "POST", "http.route": "/v1/chat",
                          "http.response.status_code": 503}),
        genai,
        _span(T1, "a1b2c3d4e5f60718", "SELECT documents", "client", t1 + 1_000_000, 12_345_678,
              parent="00f067aa0ba902b7", scope="opentelemetry.instrumentation.asyncpg",
              attributes={"db.system.name": "postgresql", "db.operation.name": "SELECT",
                          "db.collection.name": "documents", "server.address": "pg.internal",
                          "server.port": 5432}),
        _span(T1, "0102030405060708", "policy.evaluate", "internal", t1 + 1_500_000, 3_500_000,
              parent="00f067aa0ba902b7", status="ok", scope="chat-api.policy",
              attributes={"policy.name": "pii-redaction", "policy.decision": "allow", "policy.latency_ms": 3.5}),
        _span(T1, "0a0b0c0d0e0f1011", "POST /v1/retrieve", "server", t1 + 14_000_000, 30_000_000,
              parent="a1b2c3d4e5f60718", service="retriever"),
        _span(T2, "2222222222222222", "POST /v1/chat", "server", t2, 40 * S),
        _span(T2, "3333333333333333", "chat gpt-4o-mini", "client", t2 + 1_000, 39 * S, parent="2222222222222222",
              scope="opentelemetry.instrumentation.openai_v2",
              attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                          "server.address": "api.openai.com"}),
        _span(T3, "4444444444444444", "POST /v1/chat", "server", (BASE + 590) * S, 20 * S),
        _span(T4, "7777777777777777", "POST /v1/chat", "server", (BASE + 100) * S, 1 * S),
        _span(T5, "8888888888888888", "POST /v1/chat", "server", (BASE + 1000) * S, 1 * S),
        _span(T6, "9999999999999999", "POST /charge", "server", (BASE + 700) * S, 1 * S, service="billing"),
    ]


def expected_in_window() -> list[Span]:
    lo, hi = int(WINDOW[0] * S), int(WINDOW[1] * S)
    return [s for s in fixture_spans() if s.service == SERVICE and s.start_ns <= hi and s.end_ns >= lo]


def _typed(d: dict) -> tuple:
    # type names too: True == 1 == 1.0 in Python, but not on the wire
    return tuple(sorted((k, type(v).__name__, v) for k, v in d.items()))


def essentials(spans: list[Span], unit_ns: int = 1) -> list[tuple]:
    """The fields that matter, times cut to the back-end's precision, in a stable order."""
    return sorted((s.trace_id, s.span_id, s.parent_span_id, s.service, s.name, s.kind, s.start_ns // unit_ns,
                   (s.end_ns - s.start_ns) // unit_ns, s.status, s.status_message, _typed(s.attributes),
                   tuple((e.name, e.time_ns // unit_ns, _typed(e.attributes)) for e in s.events),
                   _typed(s.resource), s.scope) for s in spans)


@pytest.fixture
async def tempo():
    async with TempoStandin() as s:
        yield s


@pytest.fixture
async def jaeger():
    async with JaegerStandin() as s:
        yield s


@pytest.fixture
async def backends():
    """Back-ends made by a test, closed after it."""
    made: list[TraceBackend] = []
    yield made
    for b in made:
        await b.close()


async def _loaded(kind: str, tempo: TempoStandin, jaeger: JaegerStandin, backends: list, spans: list[Span],
                  timeout_s: float = 5, **kw) -> TraceBackend:
    if kind == "builtin":
        store = SpanStore(max_spans=10_000, max_bytes=64 << 20)
        store.add(spans)
        backend: TraceBackend = BuiltinBackend(store)
    elif kind == "tempo":
        tempo.add_spans(spans)
        backend = TempoBackend(tempo.url, timeout_s=timeout_s, **kw)
    else:
        jaeger.add_spans(spans)
        backend = JaegerBackend(jaeger.url, timeout_s=timeout_s, **kw)
    backends.append(backend)
    return backend


PRECISION = {"builtin": 1, "tempo": 1, "jaeger": 1000}


# -- the same spans come back from every back-end


@pytest.mark.parametrize("kind", ["builtin", "tempo", "jaeger"])
async def test_spans_come_back_with_the_fields_that_matter(kind, tempo, jaeger, backends):
    backend = await _loaded(kind, tempo, jaeger, backends, fixture_spans())
    assert isinstance(backend, TraceBackend) and backend.name == kind

    got = await backend.find_spans(SERVICE, *WINDOW)

    expected = expected_in_window()
    assert {s.span_id for s in expected} == {"00f067aa0ba902b7", "b7ad6b7169203331", "a1b2c3d4e5f60718",
                                             "0102030405060708", "2222222222222222", "3333333333333333",
                                             "4444444444444444"}
    assert essentials(got, PRECISION[kind]) == essentials(expected, PRECISION[kind])
    genai = next(s for s in got if s.span_id == "b7ad6b7169203331")
    assert genai.parent_span_id == "00f067aa0ba902b7" and genai.kind == "client" and genai.is_error
    assert genai.attributes["error.type"] == "429" and genai.attributes["server.port"] == 443
    assert next(s for s in got if s.span_id == "2222222222222222").trace_id == T2  # 32 digits, leading zeros kept


async def test_tempo_searches_by_traceql_then_reads_each_trace(tempo, backends):
    backend = await _loaded("tempo", tempo, None, backends, fixture_spans())
    await backend.find_spans(SERVICE, *WINDOW)

    search = [r for r in tempo.requests if r["path"] == "/api/search"]
    assert len(search) == 1
    assert search[0]["query"] == {"q": '{ resource.service.name = "chat-api" }', "start": str(BASE + 600),
                                  "end": str(BASE + 900), "limit": "200", "spss": "1"}
    fetched = sorted(r["path"] for r in tempo.requests if r["path"] != "/api/search")
    # The search answered T2 as "4a5f8e3c2d1b0a99" (Tempo trims leading zeros); it is read back padded.
    assert fetched == sorted(f"/api/v2/traces/{t}" for t in (T1, T2, T3))


async def test_tempo_older_than_the_v2_trace_api(backends):
    async with TempoStandin(v2=False) as old:
        backend = await _loaded("tempo", old, None, backends, fixture_spans(), concurrency=1)
        got = await backend.find_spans(SERVICE, *WINDOW)
    assert essentials(got) == essentials(expected_in_window())
    paths = [r["path"] for r in old.requests if r["path"] != "/api/search"]
    assert sum(p.startswith("/api/v2/") for p in paths) == 1  # tried once, then v1 only
    assert len([p for p in paths if p.startswith("/api/traces/")]) == 3


async def test_tempo_reads_otlp_json_put_in_as_sent_by_an_sdk(tempo, backends):
    start = (BASE + 700) * S
    tempo.add_otlp({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": SERVICE}}]},
        "scopeSpans": [{"scope": {"name": "rag"}, "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC700", "spanId": "EEE19B7EC3C1B100",
            "name": "retrieve", "kind": 3, "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(start + 7_000_000),
            "attributes": [{"key": "rag.top_k", "value": {"intValue": "8"}},
                           {"key": "gen_ai.response.finish_reasons",
                            "value": {"arrayValue": {"values": [{"stringValue": "stop"}]}}}],
            "status": {}}]}]}]})
    backend = TempoBackend(tempo.url, timeout_s=5)
    backends.append(backend)
    (span,) = await backend.find_spans(SERVICE, *WINDOW)
    assert (span.trace_id, span.span_id, span.parent_span_id) == ("5b8efff798038103d269b633813fc700",
                                                                 "eee19b7ec3c1b100", None)
    assert (span.kind, span.status, span.scope, span.end_ns - span.start_ns) == ("client", "unset", "rag", 7_000_000)
    assert span.attributes == {"rag.top_k": 8, "gen_ai.response.finish_reasons": ["stop"]}


@pytest.mark.parametrize("kind", ["tempo", "jaeger"])
async def test_service_names_are_quoted_not_interpreted(kind, tempo, jaeger, backends):
    odd = 'chat "api" \\ v2+beta ü'
    spans = [_span(T1, "00f067aa0ba902b7", "POST /v1/chat", "server", (BASE + 700) * S, S, service=odd),
             _span(T6, "9999999999999999", "POST /v1/chat", "server", (BASE + 700) * S, S, service="chat")]
    backend = await _loaded(kind, tempo, jaeger, backends, spans)
    got = await backend.find_spans(odd, *WINDOW)
    assert [s.span_id for s in got] == ["00f067aa0ba902b7"] and got[0].service == odd
    if kind == "tempo":
        assert tempo.requests[0]["query"]["q"] == '{ resource.service.name = "chat \\"api\\" \\\\ v2+beta ü" }'
    else:
        assert jaeger.requests[0]["query"]["service"] == odd


def test_traceql_selector_escapes_control_characters():
    assert traceql_service_selector("a\nb\tc\x01") == '{ resource.service.name = "a\\nb\\tc\\u0001" }'


# -- Jaeger specifics


async def test_jaeger_asks_for_the_window_in_microseconds(jaeger, backends):
    backend = await _loaded("jaeger", None, jaeger, backends, fixture_spans())
    await backend.find_spans(SERVICE, *WINDOW)
    (req,) = jaeger.requests
    assert req["path"] == "/api/traces"
    # Jaeger finds traces by span start, so the search reaches back a minute for spans already running.
    assert req["query"] == {"service": SERVICE, "start": str((BASE + 600 - 60) * 1_000_000),
                            "end": str((BASE + 900) * 1_000_000), "limit": "200", "lookback": "custom"}


async def test_jaeger_native_json_decodes_types_ids_status_and_logs(jaeger, backends):
    start_us = (BASE + 700) * 1_000_000
    jaeger.add_jaeger_trace({
        "traceID": "7d1c3f5e9a2b4c6d",
        "spans": [
            {"traceID": "7d1c3f5e9a2b4c6d", "spanID": "1a2b3c4d5e6f7081", "flags": 1, "operationName": "GET /healthz",
             "references": [], "startTime": start_us, "duration": 1500,
             "tags": [{"key": "span.kind", "type": "string", "value": "server"},
                      {"key": "error", "type": "bool", "value": True},
                      {"key": "payload", "type": "binary", "value": "AAAwOQ=="},
                      {"key": "big", "type": "int64", "value": "9007199254740993"},
                      {"key": "ratio", "type": "float64", "value": 0.25},
                      {"key": "cached", "type": "bool", "value": False}],
             "logs": [{"timestamp": start_us + 700, "fields": [{"key": "event", "type": "string", "value": "retry"},
                                                              {"key": "attempt", "type": "int64", "value": 2}]}],
             "processID": "p1", "warnings": None},
            {"traceID": "7d1c3f5e9a2b4c6d", "spanID": "2", "operationName": "cache.get",
             "references": [{"refType": "FOLLOWS_FROM", "traceID": "7d1c3f5e9a2b4c6d", "spanID": "1a2b3c4d5e6f7081"}],
             "startTime": start_us + 100, "duration": 20,
             "tags": [{"key": "otel.status_code", "type": "string", "value": "OK"},
                      {"key": "otel.library.name", "type": "string", "value": "redis"}],
             "logs": [], "processID": "p1", "warnings": None},
            {"traceID": "7d1c3f5e9a2b4c6d", "spanID": "3", "operationName": "render",
             "references": [{"refType": "CHILD_OF", "traceID": "00000000000000ff", "spanID": "ff"},
                            {"refType": "CHILD_OF", "traceID": "7d1c3f5e9a2b4c6d", "spanID": "1a2b3c4d5e6f7081"}],
             "startTime": start_us + 200, "duration": 30,
             "tags": [{"key": "span.kind", "type": "string", "value": "internal"},
                      {"key": "otel.status_code", "type": "string", "value": "ERROR"},
                      {"key": "error", "type": "bool", "value": True},
                      {"key": "otel.status_description", "type": "string", "value": "template missing"},
                      {"key": "otel.scope.name", "type": "string", "value": "jinja"}],
             "logs": [{"timestamp": start_us + 210, "fields": [{"key": "level", "type": "string", "value": "warn"}]}],
             "processID": "p1", "warnings": None}],
        "processes": {"p1": {"serviceName": SERVICE,
                             "tags": [{"key": "host.name", "type": "string", "value": "node-3"},
                                      {"key": "process.pid", "type": "int64", "value": 4242}]}},
        "warnings": None})
    backend = JaegerBackend(jaeger.url, timeout_s=5)
    backends.append(backend)
    got = {s.span_id: s for s in await backend.find_spans(SERVICE, *WINDOW)}

    root, cache, render = got["1a2b3c4d5e6f7081"], got["0000000000000002"], got["0000000000000003"]
    assert root.trace_id == "00000000000000007d1c3f5e9a2b4c6d"
    assert (root.kind, root.status, root.parent_span_id) == ("server", "error", None)  # OpenTracing error=true
    assert _typed(root.attributes) == _typed({"payload": "00003039", "big": 9007199254740993, "ratio": 0.25,
                                              "cached": False})
    assert root.events == [SpanEvent("retry", (start_us + 700) * 1000, {"attempt": 2})]
    assert (root.start_ns, root.end_ns) == (start_us * 1000, (start_us + 1500) * 1000)
    assert root.resource == {"service.name": SERVICE, "host.name": "node-3", "process.pid": 4242}
    assert (cache.kind, cache.status, cache.parent_span_id, cache.scope) == ("unspecified", "ok", None, "redis")
    assert cache.attributes == {}  # FOLLOWS_FROM is a link, not a parent; field tags are not attributes
    assert (render.parent_span_id, render.status, render.status_message, render.scope) == (
        "1a2b3c4d5e6f7081", "error", "template missing", "jinja")
    assert render.events == [SpanEvent("", (start_us + 210) * 1000, {"level": "warn"})]


# -- windows, services, limits


@pytest.mark.parametrize("kind", ["builtin", "tempo", "jaeger"])
async def test_window_and_service_select_spans(kind, tempo, jaeger, backends):
    backend = await _loaded(kind, tempo, jaeger, backends, fixture_spans())
    early = await backend.find_spans(SERVICE, BASE + 50.0, BASE + 150.0)
    assert [s.span_id for s in early] == ["7777777777777777"]
    assert [s.span_id for s in await backend.find_spans("billing", *WINDOW)] == ["9999999999999999"]
    assert [s.span_id for s in await backend.find_spans("retriever", *WINDOW)] == ["0a0b0c0d0e0f1011"]
    assert await backend.find_spans("no-such-service", *WINDOW) == []
    assert await backend.find_spans(SERVICE, BASE + 200.0, BASE + 300.0) == []
    # A narrow window inside T2's 40 s server span still finds it, though nothing starts there.
    inside = await backend.find_spans(SERVICE, BASE + 905.0, BASE + 910.0)
    assert {s.span_id for s in inside} == {"2222222222222222", "3333333333333333"}


@pytest.mark.parametrize("kind", ["tempo", "jaeger"])
async def test_trace_limit_truncates_and_says_so(kind, tempo, jaeger, backends, caplog):
    backend = await _loaded(kind, tempo, jaeger, backends, fixture_spans(), max_traces=2)
    with caplog.at_level(logging.WARNING, logger="responder.evidence.traces.backends"):
        got = await backend.find_spans(SERVICE, *WINDOW)
    assert len({s.trace_id for s in got}) == 2
    assert any("event=trace_search_truncated" in r.getMessage() and f"backend={kind}" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("kind", ["builtin", "tempo", "jaeger"])
async def test_span_limit_bounds_the_answer(kind, tempo, jaeger, backends, caplog):
    backend = await _loaded(kind, tempo, jaeger, backends, fixture_spans())
    with caplog.at_level(logging.WARNING, logger="responder.evidence.traces.backends"):
        got = await backend.find_spans(SERVICE, *WINDOW, limit=3)
    assert len(got) == 3
    if kind != "builtin":  # the store bounds its own answer
        assert any("event=trace_spans_truncated" in r.getMessage() for r in caplog.records)


async def test_tempo_trace_reads_are_concurrent_but_bounded(tempo, backends):
    spans = [_span(f"{i:032x}", f"{i:016x}", "POST /v1/chat", "server", (BASE + 700 + i) * S, S)
             for i in range(1, 9)]
    backend = await _loaded("tempo", tempo, None, backends, spans, concurrency=3)
    tempo.delay_s = 0.05
    got = await backend.find_spans(SERVICE, *WINDOW)
    assert len(got) == 8 and tempo.max_in_flight == 3


# -- failures


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["tempo", "jaeger"])
async def test_connection_refused(kind, backends):
    url = _closed_port_url()
    backend = TempoBackend(url, timeout_s=2) if kind == "tempo" else JaegerBackend(url, timeout_s=2)
    backends.append(backend)
    with pytest.raises(TraceBackendError) as e:
        await backend.find_spans(SERVICE, *WINDOW)
    assert f"{kind} at {url}" in str(e.value) and "could not connect" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no transport traceback upward


@pytest.mark.parametrize("kind", ["tempo", "jaeger"])
@pytest.mark.parametrize("fault, says", [
    ("fail", "answered HTTP 500: storage unavailable"),
    ("stall", "got no answer within 0.3s"),
    ("garble", "not JSON: '<html><body>502 Bad Gateway</body></html>'"),
    ("reshape", "unexpected shape"),
])
async def test_bad_answers_become_trace_backend_errors(kind, fault, says, tempo, jaeger, backends):
    standin = tempo if kind == "tempo" else jaeger
    backend = await _loaded(kind, tempo, jaeger, backends, fixture_spans(), timeout_s=0.3)  # a stall outlasts it
    if fault == "fail" and kind == "tempo":
        tempo.fail_next(status=500, message="storage unavailable")
    elif fault == "fail":
        jaeger.fail_next(status=500, message="storage unavailable")
    else:
        getattr(standin, f"{fault}_next")()
    with pytest.raises(TraceBackendError) as e:
        await backend.find_spans(SERVICE, *WINDOW)
    path = "/api/search" if kind == "tempo" else "/api/traces"
    assert str(e.value).startswith(f"{kind} at {standin.url}: GET {path} ")
    assert says in str(e.value)


async def test_tempo_failure_while_reading_a_trace(tempo, backends):
    backend = await _loaded("tempo", tempo, None, backends, fixture_spans(), concurrency=1)
    tempo.fail_next(status=503, message="querier unavailable", path="/api/v2/traces/")
    with pytest.raises(TraceBackendError) as e:
        await backend.find_spans(SERVICE, *WINDOW)
    assert "GET /api/v2/traces/" in str(e.value) and "HTTP 503: querier unavailable" in str(e.value)


async def test_tempo_undecodable_trace(tempo, backends):
    backend = await _loaded("tempo", tempo, None, backends, fixture_spans())
    tempo.reshape_next(body={"batches": [{"scopeSpans": [{"spans": [{"traceId": "not-an-id"}]}]}]},
                       path="/api/v2/traces/")
    with pytest.raises(TraceBackendError, match=r"tempo at .*could not be decoded"):
        await backend.find_spans(SERVICE, *WINDOW)


async def test_tempo_trace_gone_after_search_is_skipped(tempo, backends):
    backend = await _loaded("tempo", tempo, None, backends, fixture_spans())
    # Search still lists T3; both trace endpoints then say it is gone (retention ran in between).
    tempo.fail_next(status=404, message="trace not found", path=f"/api/v2/traces/{T3}")
    tempo.fail_next(status=404, message="trace not found", path=f"/api/traces/{T3}")
    got = await backend.find_spans(SERVICE, *WINDOW)
    assert "4444444444444444" not in {s.span_id for s in got} and len(got) == 6
    # v2 exists here, so only the missing trace was asked for through v1.
    assert [r["path"] for r in tempo.requests if r["path"].startswith("/api/traces/")] == [f"/api/traces/{T3}"]


@pytest.mark.parametrize("kind", ["tempo", "jaeger"])
async def test_configured_headers_go_with_every_request(kind, tempo, jaeger, backends):
    headers = {"X-Scope-OrgID": "team-a", "Authorization": "Bearer s3cret"}  # multi-tenant Tempo, a proxy
    backend = await _loaded(kind, tempo, jaeger, backends, fixture_spans(), headers=headers)
    await backend.find_spans(SERVICE, *WINDOW)
    requests = (tempo if kind == "tempo" else jaeger).requests
    assert len(requests) >= 1
    for r in requests:
        assert {k: r["headers"].get(k) for k in headers} == headers
        assert r["headers"]["Accept"] == "application/json"


# -- choosing a back-end


async def test_backend_from_settings_picks_each_kind(backends):
    store = SpanStore(max_spans=1000, max_bytes=1 << 20)
    builtin = backend_from_settings(Settings(), store)
    assert isinstance(builtin, BuiltinBackend) and builtin.store is store

    tempo = backend_from_settings(Settings(trace_backend="tempo", tempo_url="http://tempo:3200/"), store)
    jaeger = backend_from_settings(Settings(trace_backend="jaeger", jaeger_url="http://jaeger:16686"), store)
    backends += [tempo, jaeger]
    assert isinstance(tempo, TempoBackend) and tempo.url == "http://tempo:3200"
    assert isinstance(jaeger, JaegerBackend) and jaeger.url == "http://jaeger:16686"
    assert all(isinstance(b, TraceBackend) for b in (builtin, tempo, jaeger))

    with pytest.raises(ConfigError, match="^jaeger_url: required"):
        backend_from_settings(Settings(trace_backend="jaeger"), store)
    with pytest.raises(ConfigError, match="^trace_backend: 'zipkin'"):
        backend_from_settings(Settings(trace_backend="zipkin"), store)
