"""OTLP payloads to Spans: protobuf and OTLP/JSON (hex ids, enums as numbers or names, 64-bit
integers as strings or numbers), gzip with a hard bound, Tempo's trace shapes, and errors that
say what is wrong and where."""
from __future__ import annotations

import base64
import copy
import gzip
import json
import tracemalloc
import zlib

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1 import trace_pb2

from responder.evidence.traces import otlp
from responder.evidence.traces.model import Span, SpanEvent
from responder.evidence.traces.otlp import OtlpDecodeError, OtlpTooLarge, OtlpUnsupported
from tests.standins.tempo import otlp_value

PB = "application/x-protobuf"
JS = "application/json"
MiB = 1 << 20

TRACE = "5b8efff798038103d269b633813fc60c"
ROOT = "eee19b7ec3c1b174"
CHILD = "eee19b7ec3c1b173"
T0 = 1_700_000_000_000_000_000

RESOURCE = {"service.name": "rag-api", "deployment.environment.name": "test"}
CHILD_ATTRS = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 12_345_678_901,  # past 2**32: int64 survives both encodings
    "gen_ai.request.temperature": 0.2,
    "gen_ai.request.stop_sequences": ["\n\n", "END"],
    "llm.stream": True,
    "tool.args": {"k": 7, "nested": [1, "two"]},
    "digest": "deadbeef",  # bytes_value -> hex
    "unset": None,  # an empty AnyValue
    "error.type": "429",
}
EXPECTED = [
    Span(trace_id=TRACE, span_id=ROOT, parent_span_id=None, service="rag-api", name="POST /v1/chat", kind="server",
         start_ns=T0, end_ns=T0 + 1_500_000_000, status="ok", status_message="",
         attributes={"http.route": "/v1/chat"}, events=[], resource=RESOURCE, scope="lab.genai"),
    Span(trace_id=TRACE, span_id=CHILD, parent_span_id=ROOT, service="rag-api", name="chat gpt-4o-mini",
         kind="client", start_ns=T0 + 100_000_000, end_ns=T0 + 1_400_000_000, status="error",
         status_message="rate limited", attributes=CHILD_ATTRS,
         events=[SpanEvent("gen_ai.first_token", T0 + 350_000_000, {"gen_ai.chunk.index": 0})],
         resource=RESOURCE, scope="lab.genai"),
]


def any_value(v) -> AnyValue:
    if v is None:
        return AnyValue()
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=any_value(x)) for k, x in v.items()]))
    return AnyValue(string_value=v)


def kvs(d: dict) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(bytes.fromhex(v) if k == "digest" else v)) for k, v in d.items()]


def pb_request() -> ExportTraceServiceRequest:
    """EXPECTED, built with the protobuf classes."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs(RESOURCE))
    ss = rs.scope_spans.add()
    ss.scope.name = "lab.genai"
    ss.scope.version = "1.0"
    ss.spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(ROOT), name="POST /v1/chat",
                 kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=T0,
                 end_time_unix_nano=T0 + 1_500_000_000, attributes=kvs({"http.route": "/v1/chat"}),
                 status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK))
    child = ss.spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(CHILD),
                         parent_span_id=bytes.fromhex(ROOT), name="chat gpt-4o-mini",
                         kind=trace_pb2.Span.SPAN_KIND_CLIENT, start_time_unix_nano=T0 + 100_000_000,
                         end_time_unix_nano=T0 + 1_400_000_000, attributes=kvs(CHILD_ATTRS),
                         status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="rate limited"))
    child.events.add(time_unix_nano=T0 + 350_000_000, name="gen_ai.first_token",
                     attributes=kvs({"gen_ai.chunk.index": 0}))
    child.links.add(trace_id=bytes(range(16)), span_id=bytes(range(8)))
    return req


def jkvs(d: dict) -> list[dict]:
    return [{"key": k, "value": {"bytesValue": base64.b64encode(bytes.fromhex(v)).decode()} if k == "digest"
             else otlp_value(v)} for k, v in d.items()]


def json_request() -> dict:
    """EXPECTED, written by hand as the OTLP spec's JSON encoding describes it."""
    return {"resourceSpans": [{
        "resource": {"attributes": jkvs(RESOURCE), "droppedAttributesCount": 0},
        "scopeSpans": [{
            "scope": {"name": "lab.genai", "version": "1.0"},
            "spans": [
                {"traceId": TRACE.upper(),  # hex is case-insensitive
                 "spanId": ROOT, "parentSpanId": "", "name": "POST /v1/chat", "kind": 2,
                 "startTimeUnixNano": str(T0), "endTimeUnixNano": str(T0 + 1_500_000_000),
                 "attributes": jkvs({"http.route": "/v1/chat"}), "status": {"code": 1}},
                {"traceId": TRACE, "spanId": CHILD, "parentSpanId": ROOT, "name": "chat gpt-4o-mini",
                 "kind": "SPAN_KIND_CLIENT",  # a name, not a number: protobuf's JSON mapping allows both
                 "startTimeUnixNano": T0 + 100_000_000, "endTimeUnixNano": T0 + 1_400_000_000,  # numbers
                 "attributes": jkvs(CHILD_ATTRS), "status": {"code": 2, "message": "rate limited"},
                 "events": [{"timeUnixNano": str(T0 + 350_000_000), "name": "gen_ai.first_token",
                             "attributes": jkvs({"gen_ai.chunk.index": 0})}],
                 "links": [{"traceId": "000102030405060708090a0b0c0d0e0f", "spanId": "0001020304050607"}],
                 "flags": 257, "aFieldFromTheFuture": {"x": 1}},
            ]}]}]}


def json_body(d: dict) -> bytes:
    return json.dumps(d).encode()


def spans_at(d: dict) -> list:
    return d["resourceSpans"][0]["scopeSpans"][0]["spans"]


# --- the happy paths -------------------------------------------------------------------------

def test_protobuf_decodes_every_field():
    spans = otlp.decode_request(pb_request().SerializeToString(), PB, None, MiB)
    assert spans == EXPECTED
    assert spans[0].resource is spans[1].resource  # one dict per resource, not one per span
    assert spans[1].is_error and spans[1].duration_s == 1.3


def test_json_per_spec_decodes_to_the_same_spans():
    assert otlp.decode_request(json_body(json_request()), JS + "; charset=utf-8", None, MiB) == EXPECTED


def test_json_accepts_snake_case_keys_and_numeric_strings():
    d = json_request()
    sp = spans_at(d)[1]
    sp["trace_id"] = sp.pop("traceId")
    sp["start_time_unix_nano"] = str(sp.pop("startTimeUnixNano"))
    d["resource_spans"] = d.pop("resourceSpans")
    assert otlp.decode_request(json_body(d), JS, None, MiB) == EXPECTED


def test_gzip_single_and_multi_member():
    raw = pb_request().SerializeToString()
    assert otlp.decode_request(gzip.compress(raw), PB, "gzip", MiB) == EXPECTED
    # Two gzip members back to back are one valid gzip stream (RFC 1952).
    two = gzip.compress(raw[:40]) + gzip.compress(raw[40:])
    assert otlp.decode_request(two, PB, "GZIP", MiB) == EXPECTED


def test_empty_request_is_no_spans():
    assert otlp.decode_request(b"", PB, None, MiB) == []
    assert otlp.decode_request(b"{}", JS, None, MiB) == []
    assert otlp.decode_request(b'{"resourceSpans": []}', JS, None, MiB) == []


def test_unknown_service_and_open_enums():
    req = pb_request()
    del req.resource_spans[0].resource.attributes[:]
    req.resource_spans[0].scope_spans[0].spans[0].kind = 9  # a kind this proto version does not know
    req.resource_spans[0].scope_spans[0].spans[0].status.code = 7
    spans = otlp.decode_request(req.SerializeToString(), PB, None, MiB)
    assert {s.service for s in spans} == {"unknown_service"}
    assert (spans[0].kind, spans[0].status) == ("unspecified", "unset")


def test_all_zero_parent_is_a_root():
    req = pb_request()
    req.resource_spans[0].scope_spans[0].spans[0].parent_span_id = bytes(8)
    assert otlp.decode_request(req.SerializeToString(), PB, None, MiB)[0].parent_span_id is None


# --- Tempo's shapes --------------------------------------------------------------------------

def b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def tempo_ids(d: dict) -> dict:
    """Tempo's trace API marshals ids with protobuf's default JSON mapping: base64."""
    for sp in spans_at(d):
        for key in ("traceId", "spanId", "parentSpanId"):
            if sp.get(key):
                sp[key] = b64(sp[key].lower())
    return d


def test_tempo_v2_trace_with_base64_ids():
    d = tempo_ids(json_request())
    assert otlp.spans_from_json_dict({"trace": d}) == EXPECTED


def test_tempo_v1_batches_with_instrumentation_library_spans():
    d = tempo_ids(json_request())
    rs = d["resourceSpans"][0]
    rs["instrumentationLibrarySpans"] = rs.pop("scopeSpans")
    ils = rs["instrumentationLibrarySpans"][0]
    ils["instrumentationLibrary"] = ils.pop("scope")
    for sp in ils["spans"]:
        if sp["kind"] == 2:
            sp["kind"] = "SPAN_KIND_SERVER"  # Tempo writes enum names
        sp["status"]["code"] = {1: "STATUS_CODE_OK", 2: "STATUS_CODE_ERROR"}[sp["status"]["code"]]
    assert otlp.spans_from_json_dict({"batches": d["resourceSpans"]}) == EXPECTED


def test_json_dict_accepts_plain_otlp_json_and_hex():
    assert otlp.spans_from_json_dict(json_request()) == EXPECTED
    assert otlp.spans_from_json_dict({}) == []


def test_request_decoding_does_not_accept_base64_ids():
    """OTLP/JSON ids are hex; base64 is the tell of a sender using protobuf's default mapping."""
    d = json_request()
    spans_at(d)[1]["traceId"] = b64(TRACE)
    with pytest.raises(OtlpDecodeError) as e:
        otlp.decode_request(json_body(d), JS, None, MiB)
    assert str(e.value) == (f"resourceSpans[0].scopeSpans[0].spans[1].traceId: expected 32 hex digits, "
                            f"got {b64(TRACE)!r}")


# --- errors name what and where --------------------------------------------------------------

@pytest.mark.parametrize("key, value, expect", [
    ("traceId", "xyz", "resourceSpans[0].scopeSpans[1].spans[3].traceId: expected 32 hex digits, got 'xyz'"),
    ("traceId", TRACE[:-1] + "g", f"resourceSpans[0].scopeSpans[1].spans[3].traceId: expected 32 hex digits, "
                                  f"got '{TRACE[:-1]}g'"),
    ("traceId", "0" * 32, "resourceSpans[0].scopeSpans[1].spans[3].traceId: is all zeros, which OTLP defines "
                          "as invalid"),
    ("traceId", None, "resourceSpans[0].scopeSpans[1].spans[3].traceId: missing; expected 32 hex digits"),
    ("traceId", 12, "resourceSpans[0].scopeSpans[1].spans[3].traceId: expected a string of 32 hex digits, "
                    "got a number"),
    ("spanId", "eee19b7ec3c1b17", "resourceSpans[0].scopeSpans[1].spans[3].spanId: expected 16 hex digits, "
                                  "got 'eee19b7ec3c1b17'"),
    ("parentSpanId", "nothex", "resourceSpans[0].scopeSpans[1].spans[3].parentSpanId: expected 16 hex digits, "
                               "got 'nothex'"),
    ("startTimeUnixNano", "soon", "resourceSpans[0].scopeSpans[1].spans[3].startTimeUnixNano: invalid literal "
                                  "for int() with base 10: 'soon'"),
    ("name", 5, "resourceSpans[0].scopeSpans[1].spans[3].name: expected string or bytes-like object, got 'int'"),
])
def test_json_span_errors_name_the_field(key, value, expect):
    good = spans_at(json_request())[1]
    bad = dict(good)
    if value is None:
        del bad[key]
    else:
        bad[key] = value
    d = {"resourceSpans": [{"scopeSpans": [{"spans": [good]}, {"spans": [good, good, good, bad, good]}]}]}
    decoded = otlp.decode_export(json_body(d), JS, None, MiB)
    assert (len(decoded.spans), decoded.rejected) == (5, 1)  # only the bad span is rejected
    assert [str(e) for e in decoded.errors] == [expect]
    assert decoded.summary() == f"1 span(s) rejected: {expect}"
    with pytest.raises(OtlpDecodeError) as e:
        otlp.decode_request(json_body(d), JS, None, MiB)
    assert str(e.value) == expect
    assert e.value.field == expect.split(": ")[0]


def test_protobuf_bad_ids_reject_only_their_span():
    req = pb_request()
    spans = req.resource_spans[0].scope_spans[0].spans
    spans[0].trace_id = bytes(15)
    spans[1].span_id = b""
    extra = spans.add()
    extra.CopyFrom(spans[1])
    extra.span_id = bytes(8)
    good = spans.add()
    good.CopyFrom(spans[1])
    good.span_id = b"\x01" * 8
    good.parent_span_id = b"\x02" * 3
    last = spans.add()
    last.CopyFrom(spans[1])
    last.span_id = b"\x03" * 8
    decoded = otlp.decode_export(req.SerializeToString(), PB, None, MiB)
    assert [s.span_id for s in decoded.spans] == ["03" * 8]
    assert decoded.rejected == 4
    assert [str(e) for e in decoded.errors] == [
        "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected 16 bytes, not all zero; got 15 bytes",
        "resourceSpans[0].scopeSpans[0].spans[1].spanId: expected 8 bytes, not all zero; got 0 bytes",
        "resourceSpans[0].scopeSpans[0].spans[2].spanId: is all zeros, which OTLP defines as invalid",
        "resourceSpans[0].scopeSpans[0].spans[3].parentSpanId: expected 8 bytes or none; got 3 bytes",
    ]


def test_rejections_keep_a_few_reasons_and_count_all():
    bad = dict(spans_at(json_request())[1], spanId="nope")
    d = {"resourceSpans": [{"scopeSpans": [{"spans": [bad] * 40}]}]}
    decoded = otlp.decode_export(json_body(d), JS, None, MiB)
    assert decoded.rejected == 40 and len(decoded.errors) == otlp.MAX_ERRORS and decoded.spans == []
    assert decoded.summary().endswith("(and 35 more)")


@pytest.mark.parametrize("doc, expect", [
    ([], "expected a JSON object, got a list"),
    ({"resourceSpans": {"a": 1}}, "resourceSpans: expected a list, got an object"),
    ({"resourceSpans": [7]}, "resourceSpans[0]: expected an object, got a number"),
    ({"resourceSpans": [{"scopeSpans": "x"}]}, "resourceSpans[0].scopeSpans: expected a list, got a string"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": {}}]}]},
     "resourceSpans[0].scopeSpans[0].spans: expected a list, got an object"),
])
def test_json_structure_errors_fail_the_body(doc, expect):
    with pytest.raises(OtlpDecodeError) as e:
        otlp.decode_export(json_body(doc), JS, None, MiB)
    assert str(e.value) == expect


def test_bad_resource_rejects_its_spans():
    d = json_request()
    d["resourceSpans"][0]["resource"]["attributes"] = [{"key": "service.name", "value": {"intValue": "many"}}]
    decoded = otlp.decode_export(json_body(d), JS, None, MiB)
    assert decoded.spans == [] and decoded.rejected == 2
    assert str(decoded.errors[0]).startswith("resourceSpans[0].resource.attributes.value.intValue:")


@pytest.mark.parametrize("body, expect", [
    (b'{"resourceSpans": [', "body is not valid JSON at line 1 column 20 (char 19): Expecting value"),
    (b'{"a": "\xff"}', "body is not UTF-8 text (byte 7)"),
    (b"[" * 200_000 + b"]" * 200_000, "body is not valid JSON: nested too deeply"),
])
def test_malformed_json(body, expect):
    with pytest.raises(OtlpDecodeError) as e:
        otlp.decode_request(body, JS, None, MiB)
    assert str(e.value) == expect


@pytest.mark.parametrize("body", [
    b"\x0a\xff\xff\xff\xff\x0f",  # resource_spans with a length past the end
    b"\x0a\x02\x0a\xff",  # truncated nested message
    b"\x0f",  # wire type 7 does not exist
], ids=["length-past-end", "truncated", "bad-wire-type"])
def test_malformed_protobuf(body):
    with pytest.raises(OtlpDecodeError) as e:
        otlp.decode_request(body, PB, None, MiB)
    assert str(e.value).startswith("body is not a protobuf ExportTraceServiceRequest")
    assert not isinstance(e.value, (OtlpTooLarge, OtlpUnsupported))


@pytest.mark.parametrize("ctype, encoding, expect", [
    ("text/plain", None, "content type 'text/plain' is not supported; send application/x-protobuf or "
                         "application/json"),
    ("", None, "content type '(none)' is not supported"),
    (PB, "br", "content encoding 'br' is not supported; send gzip or none"),
])
def test_unsupported_media(ctype, encoding, expect):
    with pytest.raises(OtlpUnsupported) as e:
        otlp.decode_request(b"", ctype, encoding, MiB)
    assert str(e.value).startswith(expect)


def test_too_large_without_compression():
    body = pb_request().SerializeToString()
    with pytest.raises(OtlpTooLarge) as e:
        otlp.decode_request(body, PB, None, len(body) - 1)
    assert str(e.value) == f"body is {len(body)} bytes; the limit is {len(body) - 1} bytes"
    assert otlp.decode_request(body, PB, None, len(body)) == EXPECTED  # the limit itself is allowed


def test_gzip_limit_is_on_the_inflated_size():
    raw = pb_request().SerializeToString()
    with pytest.raises(OtlpTooLarge):
        otlp.decode_request(gzip.compress(raw), PB, "gzip", len(raw) - 1)
    assert otlp.decode_request(gzip.compress(raw), PB, "gzip", len(raw)) == EXPECTED


def bomb(inflated: int) -> bytes:
    """A gzip stream of zeros: about 1 KiB per MiB it inflates to."""
    c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(MiB)
    return b"".join([c.compress(zeros) for _ in range(inflated // MiB)] + [c.flush()])


@pytest.mark.parametrize("multi_member", [False, True])
@pytest.mark.slow
def test_gzip_bomb_is_refused_without_inflating_it(multi_member):
    # 1 GiB inflated, from a body of about a megabyte (multi-member: a thousand small members).
    body = gzip.compress(bytes(MiB)) * 1024 if multi_member else bomb(1 << 30)
    assert len(body) < 2 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(OtlpTooLarge) as e:
            otlp.decode_request(body, PB, "gzip", 4 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(e.value) == f"body inflates to more than the limit of {4 * MiB} bytes"
    assert peak < 12 * MiB, f"inflating used {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("body, expect", [
    (b"plainly not gzip", "body is not valid gzip: Error -3 while decompressing data: incorrect header check"),
    (gzip.compress(b"x" * 1000)[:-12], "body is not valid gzip: it ends before the end of the compressed stream"),
    (b"", "body is not valid gzip: it ends before the end of the compressed stream"),
    (gzip.compress(b"{}") + b"trailing", "body is not valid gzip: Error -3 while decompressing data: "
                                         "incorrect header check"),
], ids=["not-gzip", "truncated", "empty", "trailing-garbage"])
def test_bad_gzip(body, expect):
    with pytest.raises(OtlpDecodeError) as e:
        otlp.decode_request(body, JS, "gzip", MiB)
    assert str(e.value) == expect


def test_decoding_does_not_change_the_callers_dict():
    d = json_request()
    before = copy.deepcopy(d)
    otlp.spans_from_json_dict(d)
    assert d == before
