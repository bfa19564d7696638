"""The OTLP/HTTP receiver on a real loopback socket, fed by the real OpenTelemetry SDK exporter
(protobuf, with and without gzip) and by hand-built OTLP/JSON; every refusal answers with the
status OTLP specifies, a reason, and leaves the store as it was.

aiohttp's server inflates gzip bodies itself by default; each gzip test runs twice, once that
way and once with it turned off so the receiver's own bounded gunzip does the work."""
from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.http import bearer_ok
from responder.evidence.traces.model import Span, SpanEvent
from responder.evidence.traces.receiver import OtlpReceiver
from responder.evidence.traces.store import SpanStore

TOKEN = "otlp-t0ken"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}
LIMIT = 64 * 1024
MiB = 1 << 20

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
CHILD = "00f067aa0ba902b7"
T0 = 1_700_000_000_000_000_000


@dataclass
class Running:
    url: str
    store: SpanStore
    runner: web.AppRunner


@pytest.fixture
async def recv(request):
    """The receiver's routes on a loopback port. An indirect parameter sets aiohttp's
    auto_decompress (default on, as in ``llmslo serve``)."""
    store = SpanStore(max_spans=10_000, max_bytes=64 * MiB)
    receiver = OtlpReceiver(store, lambda r: bearer_ok(r.headers.get("Authorization"), TOKEN), LIMIT)
    app = web.Application()
    receiver.add_routes(app)
    runner = web.AppRunner(app, access_log=None, auto_decompress=getattr(request, "param", True))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield Running(f"http://{host}:{port}", store, runner)
    await runner.cleanup()


both_inflaters = pytest.mark.parametrize("recv", [True, False], ids=["aiohttp-inflates", "receiver-inflates"],
                                         indirect=True)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


# --- the real SDK exporter -------------------------------------------------------------------

def export_genai_trace(endpoint: str, token: str, compression: Compression) -> list[ReadableSpan]:
    """A RAG request as an instrumented service would trace it, exported span by span; returns
    what the SDK produced, to compare with what arrived."""
    produced = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-api", "service.version": "1.2.3"}))
    provider.add_span_processor(SimpleSpanProcessor(produced))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=endpoint, headers={"Authorization": f"Bearer {token}"}, compression=compression, timeout=5)))
    tracer = provider.get_tracer("lab.genai", "0.1")
    with tracer.start_as_current_span("POST /v1/chat", kind=SpanKind.SERVER,
                                      attributes={"http.request.method": "POST", "http.route": "/v1/chat"}) as root:
        with tracer.start_as_current_span("retrieve", attributes={"db.system.name": "qdrant", "db.k": 8}):
            pass
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, record_exception=False,
                                          set_status_on_exception=False) as failed:
            failed.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                   "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 812,
                                   "error.type": "429"})
            failed.record_exception(RuntimeError("429 Too Many Requests"))
            failed.set_status(Status(StatusCode.ERROR, "rate limited"))
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as llm:
            llm.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 812,
                                "gen_ai.usage.output_tokens": 96, "gen_ai.request.temperature": 0.2,
                                "gen_ai.response.finish_reasons": ["stop"], "gen_ai.request.stream": True})
            llm.add_event("gen_ai.first_token", {"gen_ai.response.time_to_first_chunk": 0.21})
        root.set_attribute("http.response.status_code", 200)
        root.set_status(Status(StatusCode.OK))
    provider.shutdown()
    return list(produced.get_finished_spans())


def as_stored(r: ReadableSpan) -> Span:
    """What the store must hold for an SDK span, field by field."""
    def attrs(a) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in (a or {}).items()}

    return Span(trace_id=f"{r.context.trace_id:032x}", span_id=f"{r.context.span_id:016x}",
                parent_span_id=f"{r.parent.span_id:016x}" if r.parent else None, service="rag-api", name=r.name,
                kind=r.kind.name.lower(), start_ns=r.start_time, end_ns=r.end_time,
                status=r.status.status_code.name.lower(), status_message=r.status.description or "",
                attributes=attrs(r.attributes),
                events=[SpanEvent(e.name, e.timestamp, attrs(e.attributes)) for e in r.events],
                resource=attrs(r.resource.attributes), scope=r.instrumentation_scope.name)


@both_inflaters
@pytest.mark.parametrize("compression", [Compression.Gzip, Compression.NoCompression], ids=["gzip", "plain"])
async def test_sdk_exporter_delivers_a_genai_trace(recv, compression):
    produced = await asyncio.to_thread(export_genai_trace, f"{recv.url}/v1/traces", TOKEN, compression)
    assert len(produced) == 4
    trace_id = f"{produced[0].context.trace_id:032x}"
    stored = recv.store.trace(trace_id)
    assert stored == sorted((as_stored(r) for r in produced), key=lambda s: s.start_ns)
    by_name = {s.name: s for s in stored if s.name != "chat gpt-4o-mini"}
    llm_failed, llm_ok = [s for s in stored if s.name == "chat gpt-4o-mini"]
    # Spelled out, so a wrong mapping cannot hide behind as_stored making the same mistake.
    root = by_name["POST /v1/chat"]
    assert (root.kind, root.status, root.parent_span_id) == ("server", "ok", None)
    assert root.resource["service.name"] == "rag-api" and root.scope == "lab.genai"
    assert {s.parent_span_id for s in stored if s is not root} == {root.span_id}
    assert (llm_failed.kind, llm_failed.status, llm_failed.status_message) == ("client", "error", "rate limited")
    assert llm_failed.is_error and llm_failed.attributes["error.type"] == "429"
    assert llm_failed.attributes["gen_ai.usage.input_tokens"] == 812
    assert llm_failed.events[0].name == "exception"
    assert llm_failed.events[0].attributes["exception.message"] == "429 Too Many Requests"
    assert llm_ok.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert llm_ok.attributes["gen_ai.request.temperature"] == 0.2
    assert llm_ok.attributes["gen_ai.request.stream"] is True
    assert llm_ok.events[0].name == "gen_ai.first_token" and llm_ok.start_ns <= llm_ok.events[0].time_ns
    assert by_name["retrieve"].kind == "internal" and by_name["retrieve"].attributes == {
        "db.system.name": "qdrant", "db.k": 8}
    assert recv.store.services() == ["rag-api"]


def export_many(endpoint: str, n: int) -> int:
    provider = TracerProvider(resource=Resource.create({"service.name": "batchy"}))
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, headers=BEARER, compression=Compression.Gzip,
                                                    timeout=5), max_export_batch_size=128, schedule_delay_millis=50)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bulk")
    for i in range(n):
        with tracer.start_as_current_span("embed", attributes={"gen_ai.operation.name": "embeddings", "i": i}):
            pass
    flushed = provider.force_flush(10_000)
    provider.shutdown()
    return flushed


async def test_batch_span_processor_delivers_every_span(recv):
    assert await asyncio.to_thread(export_many, f"{recv.url}/v1/traces", 700)
    st = recv.store.stats()
    assert (st["spans"], st["received_total"], st["evicted_total"]) == (700, 700, 0)
    got = recv.store.query("batchy", 0, 1 << 63)
    assert sorted(s.attributes["i"] for s in got) == list(range(700))


async def test_exporter_with_a_wrong_token_fails_and_stores_nothing(recv):
    produced = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(produced))
    with provider.get_tracer("t").start_as_current_span("x"):
        pass
    exporter = OTLPSpanExporter(endpoint=f"{recv.url}/v1/traces", headers={"Authorization": "Bearer nope"}, timeout=5)
    result = await asyncio.to_thread(exporter.export, produced.get_finished_spans())
    exporter.shutdown()
    provider.shutdown()
    assert result == SpanExportResult.FAILURE
    assert recv.store.stats()["received_total"] == 0


# --- OTLP/JSON -------------------------------------------------------------------------------

def json_span(span_id: str, parent: str = "", **over) -> dict:
    d = {"traceId": TRACE, "spanId": span_id, "parentSpanId": parent, "name": "chat", "kind": 3,
         "startTimeUnixNano": str(T0), "endTimeUnixNano": str(T0 + 250_000_000),
         "attributes": [{"key": "gen_ai.request.model", "value": {"stringValue": "llama-3.1-8b"}},
                        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "42"}}],
         "status": {"code": 2, "message": "upstream 503"}}
    return d | over


def json_request(*spans: dict) -> dict:
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",
                                                            "value": {"stringValue": "chat-svc"}}]},
                               "scopeSpans": [{"scope": {"name": "llm"}, "spans": list(spans)}]}]}


async def test_json_request_per_spec(recv, http):
    body = json_request(json_span(ROOT), json_span(CHILD, ROOT, kind=1, status={}))
    async with http.post(f"{recv.url}/v1/traces", json=body, headers=BEARER) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {}  # full success: partial_success left unset
    stored = recv.store.trace(TRACE)
    assert [(s.span_id, s.parent_span_id, s.kind, s.status) for s in stored] == [
        (ROOT, None, "client", "error"), (CHILD, ROOT, "internal", "unset")]
    assert stored[0].attributes == {"gen_ai.request.model": "llama-3.1-8b", "gen_ai.usage.input_tokens": 42}
    assert stored[0].service == "chat-svc" and stored[0].duration_s == 0.25


async def test_json_partial_success(recv, http):
    body = json_request(json_span(ROOT), json_span("zz"), json_span(CHILD, ROOT))
    async with http.post(f"{recv.url}/v1/traces", json=body, headers=BEARER) as resp:
        assert resp.status == 200
        assert await resp.json() == {"partialSuccess": {
            "rejectedSpans": "1",  # int64: a string in protobuf's JSON mapping
            "errorMessage": "1 span(s) rejected: resourceSpans[0].scopeSpans[0].spans[1].spanId: "
                            "expected 16 hex digits, got 'zz'"}}
    assert [s.span_id for s in recv.store.trace(TRACE)] == [ROOT, CHILD]


async def test_protobuf_partial_success(recv, http):
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(ROOT), name="ok", start_time_unix_nano=T0)
    spans.add(trace_id=bytes(16), span_id=bytes.fromhex(CHILD), name="zero trace id")
    async with http.post(f"{recv.url}/v1/traces", data=req.SerializeToString(), headers=BEARER | PB) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-protobuf"
        answer = ExportTraceServiceResponse.FromString(await resp.read())
    assert answer.partial_success.rejected_spans == 1
    assert answer.partial_success.error_message == (
        "1 span(s) rejected: resourceSpans[0].scopeSpans[0].spans[1].traceId: is all zeros, which OTLP defines "
        "as invalid")
    assert [s.name for s in recv.store.trace(TRACE)] == ["ok"]


async def test_empty_request_is_success(recv, http):
    async with http.post(f"{recv.url}/v1/traces", data=b"", headers=BEARER | PB) as resp:
        assert resp.status == 200
        assert ExportTraceServiceResponse.FromString(await resp.read()) == ExportTraceServiceResponse()


# --- refusals --------------------------------------------------------------------------------

async def refused(http, recv, status: int, data, headers: dict, as_json: bool = False,
                  answer_headers: dict | None = None) -> status_pb2.Status:
    """POST, expect ``status`` with a google.rpc.Status body, and nothing stored. The response's
    headers are copied into ``answer_headers`` when given."""
    before = recv.store.stats()
    async with http.post(f"{recv.url}/v1/traces", data=data, headers=headers) as resp:
        body = await resp.read()
        assert resp.status == status, body
        if as_json:
            assert resp.content_type == "application/json"
            answer = json.loads(body)
            out = status_pb2.Status(code=answer.get("code", 0), message=answer["message"])
            for d in answer.get("details", []):
                assert d["@type"] == "type.googleapis.com/google.rpc.BadRequest"
                detail = error_details_pb2.BadRequest()
                for v in d["fieldViolations"]:
                    detail.field_violations.add(field=v["field"], description=v["description"])
                out.details.add().Pack(detail)
        else:
            assert resp.content_type == "application/x-protobuf"
            out = status_pb2.Status.FromString(body)
        if answer_headers is not None:
            answer_headers.update(resp.headers)
    assert recv.store.stats() == before
    return out


def violations(status: status_pb2.Status) -> list[tuple[str, str]]:
    out = []
    for d in status.details:
        br = error_details_pb2.BadRequest()
        assert d.Unpack(br)
        out += [(v.field, v.description) for v in br.field_violations]
    return out


async def test_all_spans_invalid_is_400_naming_the_field(recv, http):
    body = json.dumps(json_request(json_span("zz"))).encode()
    st = await refused(http, recv, 400, body, BEARER | JS, as_json=True)
    assert st.message == ("1 span(s) rejected: resourceSpans[0].scopeSpans[0].spans[0].spanId: expected 16 hex "
                          "digits, got 'zz'")
    assert violations(st) == [("resourceSpans[0].scopeSpans[0].spans[0].spanId", "expected 16 hex digits, got 'zz'")]


@pytest.mark.parametrize("trace_id", ["abc", TRACE[:-2] + "xy", b"not hex".hex()[:16] + "0" * 15])
async def test_bad_hex_ids_are_400(recv, http, trace_id):
    body = json.dumps(json_request(json_span(ROOT, traceId=trace_id))).encode()
    st = await refused(http, recv, 400, body, BEARER | JS, as_json=True)
    assert "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected 32 hex digits" in st.message


@pytest.mark.parametrize("body", [b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05\x0a\x03\x0a\x01", b"\x0f\x00"],
                         ids=["length-past-end", "truncated", "bad-wire-type"])
async def test_malformed_protobuf_is_400(recv, http, body):
    st = await refused(http, recv, 400, body, BEARER | PB)
    assert st.message.startswith("body is not a protobuf ExportTraceServiceRequest")
    assert st.code == 3  # INVALID_ARGUMENT


@pytest.mark.parametrize("body, reason", [
    (b'{"resourceSpans": [{"scopeSpans": [', "body is not valid JSON at line 1 column 36 (char 35): Expecting value"),
    (b"[1, 2]", "expected a JSON object, got a list"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + TRACE.encode() + b'", "spanId": "'
     + ROOT.encode() + b'", "startTimeUnixNano": "tomorrow"}]}]}]}',
     "resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano: invalid literal for int() with base 10: "
     "'tomorrow'"),
], ids=["truncated", "array", "bad-time"])
async def test_malformed_json_is_400(recv, http, body, reason):
    st = await refused(http, recv, 400, body, BEARER | JS, as_json=True)
    assert reason in st.message


@both_inflaters
@pytest.mark.parametrize("headers, body, reason", [
    ({"Content-Type": "text/plain"}, b"\x0a\x00", "content type 'text/plain' is not supported"),
    ({"Content-Type": "application/protobuf"}, b"\x0a\x00", "content type 'application/protobuf' is not supported"),
    (PB | {"Content-Encoding": "deflate"}, zlib.compress(b"\x0a\x00"), "content encoding 'deflate' is not supported"),
    (PB | {"Content-Encoding": "snappy"}, b"\x0a\x00", "content encoding 'snappy' is not supported"),
], ids=["text", "protobuf-without-x", "deflate", "snappy"])
async def test_unsupported_media_is_415(recv, http, headers, body, reason):
    # (br and zstd never reach the handler when aiohttp lacks their decoders: it answers 400 itself.)
    st = await refused(http, recv, 415, body, BEARER | headers)
    assert st.message.startswith(reason)


async def test_oversized_by_content_length_is_413(recv, http):
    st = await refused(http, recv, 413, bytes(LIMIT + 1), BEARER | PB)
    assert st.message == f"body is {LIMIT + 1} bytes; the limit is {LIMIT} bytes"


async def test_oversized_chunked_is_413(recv, http):
    async def chunks():
        for _ in range(LIMIT // 4096 + 2):  # no Content-Length: the read itself must stop
            yield bytes(4096)

    st = await refused(http, recv, 413, chunks(), BEARER | PB)
    assert st.message == f"body is over the limit of {LIMIT} bytes"


async def test_body_at_the_limit_is_read(recv, http):
    # A valid request padded with an unknown field to exactly the limit: accepted.
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(ROOT),
                                                         name="padded")
    body = req.SerializeToString()
    pad_len = LIMIT - len(body) - 4  # tag (1 byte) + length varint (3 bytes)
    body += b"\x7a" + bytes([pad_len & 0x7F | 0x80, (pad_len >> 7) & 0x7F | 0x80, pad_len >> 14]) + bytes(pad_len)
    assert len(body) == LIMIT
    async with http.post(f"{recv.url}/v1/traces", data=body, headers=BEARER | PB) as resp:
        assert resp.status == 200
    assert [s.name for s in recv.store.trace(TRACE)] == ["padded"]


def gzip_bomb(inflated: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return b"".join([c.compress(bytes(MiB)) for _ in range(inflated // MiB)] + [c.flush()])


@both_inflaters
@pytest.mark.slow
async def test_gzip_bomb_is_413(recv, http):
    bomb = gzip_bomb(48 * MiB)
    assert len(bomb) < LIMIT  # passes the Content-Length check: only inflating finds it
    st = await refused(http, recv, 413, bomb, BEARER | PB | {"Content-Encoding": "gzip"})
    assert st.message in (f"body is over the limit of {LIMIT} bytes once inflated",  # aiohttp inflated it
                          f"body inflates to more than the limit of {LIMIT} bytes")  # the receiver did


@both_inflaters
async def test_gzip_body_that_is_not_gzip_is_400(recv, http):
    st = await refused(http, recv, 400, b"\x0a\x00" * 100, BEARER | PB | {"Content-Encoding": "gzip"})
    assert "gzip" in st.message


@both_inflaters
async def test_gzip_json_is_accepted(recv, http):
    body = gzip.compress(json.dumps(json_request(json_span(ROOT))).encode())
    async with http.post(f"{recv.url}/v1/traces", data=body, headers=BEARER | JS | {"Content-Encoding": "gzip"}) as r:
        assert r.status == 200
    assert [s.span_id for s in recv.store.trace(TRACE)] == [ROOT]


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN], ids=["none", "wrong", "basic",
                                                                                       "no-scheme"])
@pytest.mark.parametrize("ctype", [PB, JS, {"Content-Type": "text/plain"}], ids=["protobuf", "json", "text"])
async def test_unauthorized_is_401_before_anything_else(recv, http, auth, ctype):
    headers = ctype | ({"Authorization": auth} if auth else {})
    body = json.dumps(json_request(json_span(ROOT))).encode()
    answer_headers: dict = {}
    st = await refused(http, recv, 401, body, headers, as_json=ctype is JS, answer_headers=answer_headers)
    assert st.message.startswith("unauthorized")
    assert answer_headers["WWW-Authenticate"].startswith("Bearer")


# --- GET /api/traces/{trace_id} --------------------------------------------------------------

async def test_trace_lookup(recv, http):
    body = json_request(json_span(CHILD, ROOT, startTimeUnixNano=str(T0 + 5)), json_span(ROOT))
    async with http.post(f"{recv.url}/v1/traces", json=body, headers=BEARER) as resp:
        assert resp.status == 200
    async with http.get(f"{recv.url}/api/traces/{TRACE.upper()}", headers=BEARER) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["trace_id"] == TRACE
    assert [s["span_id"] for s in answer["spans"]] == [ROOT, CHILD]  # by start time, not arrival
    assert answer["spans"][0] == recv.store.trace(TRACE)[0].to_dict()


@pytest.mark.parametrize("trace_id, headers, status, reason", [
    (TRACE, {}, 401, "unauthorized"),
    (TRACE, {"Authorization": "Bearer wrong"}, 401, "unauthorized"),
    ("1" * 32, BEARER, 404, f"no span of trace {'1' * 32} is in the store"),
    ("xyz", BEARER, 400, "trace id 'xyz': expected 32 hex digits"),
    (TRACE + "0", BEARER, 400, "expected 32 hex digits"),
], ids=["no-token", "wrong-token", "unknown", "not-hex", "too-long"])
async def test_trace_lookup_refusals(recv, http, trace_id, headers, status, reason):
    async with http.get(f"{recv.url}/api/traces/{trace_id}", headers=headers) as resp:
        assert resp.status == status
        assert reason in (await resp.json())["error"]
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
