"""OTLP trace payloads decoded into :class:`~responder.evidence.traces.model.Span`.

Owns the wire formats: OTLP/HTTP export bodies (binary protobuf and OTLP/JSON, optionally gzip),
and the JSON shapes a trace back-end answers with (OTLP/JSON, Tempo's v1 ``batches`` and v2
``trace``). Protobuf messages come from ``opentelemetry-proto``; JSON goes through
``google.protobuf.json_format`` one leaf message at a time, so an error names its place
(``resourceSpans[0].scopeSpans[1].spans[3].traceId: ...``) and a bad span rejects only itself.

OTLP/JSON deviates from protobuf's JSON mapping in one way ``json_format`` cannot follow: trace
and span ids are hex, not base64. Ids are therefore taken out of each span object and decoded
here. Tempo's trace API answers with base64 ids (protobuf's default), so the back-end shapes
accept both; the two cannot be confused because their lengths differ (32/16 hex digits vs 24/12
base64 characters).
"""
from __future__ import annotations

import base64
import binascii
import re
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from common.http import JsonBodyError, load_json
from responder.evidence.traces.model import KINDS, STATUSES, Span, SpanEvent

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
UNKNOWN_SERVICE = "unknown_service"

# How many rejection reasons a decode keeps; a batch of 512 bad spans needs one or two, not 512.
MAX_ERRORS = 5

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_intern = sys.intern  # attribute keys repeat on every span: one string each, not one per span


class OtlpDecodeError(ValueError):
    """The payload cannot be decoded. ``field`` is where (an OTLP/JSON path), ``reason`` what."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


class OtlpTooLarge(OtlpDecodeError):
    """The body, once decompressed, is longer than the limit."""


class OtlpUnsupported(OtlpDecodeError):
    """The content type or content encoding is not one OTLP/HTTP defines."""


@dataclass(slots=True)
class DecodedExport:
    """The spans a request carried that are valid, and how many were rejected and why."""

    spans: list[Span]
    rejected: int = 0
    errors: list[OtlpDecodeError] = field(default_factory=list)  # the first MAX_ERRORS

    def reject(self, error: OtlpDecodeError, count: int = 1) -> None:
        self.rejected += count
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error)

    def summary(self) -> str:
        """One English sentence for OTLP's partial_success.error_message."""
        if not self.rejected:
            return ""
        more = f" (and {self.rejected - len(self.errors)} more)" if self.rejected > len(self.errors) else ""
        return f"{self.rejected} span(s) rejected: " + "; ".join(str(e) for e in self.errors) + more


class _Invalid(Exception):
    """One span is invalid: ``field`` names the OTLP/JSON field, ``reason`` what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason


# --- entry points ---------------------------------------------------------------------------

def decode_request(body: bytes, content_type: str, content_encoding: str | None, max_bytes: int) -> list[Span]:
    """Every span of an OTLP/HTTP export body; any invalid span fails the whole body."""
    decoded = decode_export(body, content_type, content_encoding, max_bytes)
    if decoded.errors:
        raise decoded.errors[0]
    return decoded.spans


def decode_export(body: bytes, content_type: str, content_encoding: str | None, max_bytes: int) -> DecodedExport:
    """Decode an OTLP/HTTP export body, keeping the valid spans and counting the invalid ones.

    Raises :class:`OtlpUnsupported` for a content type or encoding OTLP does not define,
    :class:`OtlpTooLarge` past ``max_bytes`` (after decompression), :class:`OtlpDecodeError`
    when the body as a whole is not an ExportTraceServiceRequest."""
    media = media_type(content_type)
    if media not in (PROTOBUF, JSON):
        raise OtlpUnsupported(f"content type {content_type or '(none)'!r} is not supported; "
                              f"send {PROTOBUF} or {JSON}")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        body = gunzip(body, max_bytes)
    elif encoding != "identity":
        raise OtlpUnsupported(f"content encoding {content_encoding!r} is not supported; send gzip or none")
    elif len(body) > max_bytes:
        raise OtlpTooLarge(f"body is {len(body)} bytes; the limit is {max_bytes} bytes")
    if media == PROTOBUF:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as e:
            raise OtlpDecodeError(f"body is not a protobuf ExportTraceServiceRequest: {e}") from None
        return _from_request(request)
    return _from_json(_load_json(body), allow_base64=False, allow_tempo=False)


def spans_from_json_dict(d: dict) -> list[Span]:
    """Every span of an OTLP/JSON request, a Tempo v1 ``{"batches": ...}`` trace or a Tempo v2
    ``{"trace": {"resourceSpans": ...}}`` trace. Ids may be hex or base64. Any invalid span
    raises :class:`OtlpDecodeError` naming it."""
    decoded = _from_json(d, allow_base64=True, allow_tempo=True)
    if decoded.errors:
        raise decoded.errors[0]
    return decoded.spans


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Inflate a gzip body (one or more members) without ever holding more than ``max_bytes + 1``
    inflated bytes: a small body that inflates to gigabytes is refused, not allocated."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            # max_length is at least 1 here; 0 would mean "unlimited".
            out += inflater.decompress(data, max_bytes + 1 - len(out))
        except zlib.error as e:
            raise OtlpDecodeError(f"body is not valid gzip: {e}") from None
        if len(out) > max_bytes:
            raise OtlpTooLarge(f"body inflates to more than the limit of {max_bytes} bytes")
        if not inflater.eof:
            raise OtlpDecodeError("body is not valid gzip: it ends before the end of the compressed stream")
        data = inflater.unused_data
        if not data:
            return bytes(out)


# --- protobuf -------------------------------------------------------------------------------

def _from_request(request: ExportTraceServiceRequest) -> DecodedExport:
    result = DecodedExport([])
    append = result.spans.append
    trace_ids: dict[bytes, str] = {}
    for i, rs in enumerate(request.resource_spans):
        resource = _attrs(rs.resource.attributes)
        service = _service(resource)
        for j, ss in enumerate(rs.scope_spans):
            scope = ss.scope.name
            for k, sp in enumerate(ss.spans):
                try:
                    append(_span(sp, service, resource, scope, trace_ids))
                except _Invalid as e:
                    result.reject(OtlpDecodeError(e.reason, f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}].{e.field}"))
    return result


def _span(sp: PbSpan, service: str, resource: dict, scope: str, trace_ids: dict[bytes, str]) -> Span:
    """One protobuf span as a model Span; ``trace_ids`` shares one id string per trace."""
    tid = sp.trace_id
    if len(tid) != 16 or tid == _ZERO_TRACE:
        raise _Invalid("traceId", f"expected 16 bytes, not all zero; got {len(tid)} bytes" if len(tid) != 16
                       else "is all zeros, which OTLP defines as invalid")
    sid = sp.span_id
    if len(sid) != 8 or sid == _ZERO_SPAN:
        raise _Invalid("spanId", f"expected 8 bytes, not all zero; got {len(sid)} bytes" if len(sid) != 8
                       else "is all zeros, which OTLP defines as invalid")
    pid = sp.parent_span_id
    if pid and len(pid) != 8:
        raise _Invalid("parentSpanId", f"expected 8 bytes or none; got {len(pid)} bytes")
    trace_id = trace_ids.get(tid)
    if trace_id is None:
        trace_id = trace_ids[tid] = tid.hex()
    kind = sp.kind
    status = sp.status
    code = status.code
    events = [SpanEvent(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in sp.events] if sp.events else []
    return Span(trace_id, sid.hex(), pid.hex() if pid and pid != _ZERO_SPAN else None, service, sp.name,
                KINDS[kind] if 0 <= kind < len(KINDS) else "unspecified",  # open enum: unknown values happen
                sp.start_time_unix_nano, sp.end_time_unix_nano,
                STATUSES[code] if 0 <= code < len(STATUSES) else "unset", status.message,
                _attrs(sp.attributes), events, resource, scope)


def _attrs(kvs) -> dict[str, Any]:
    return {_intern(kv.key): _value(kv.value) for kv in kvs}


def _value(v) -> Any:
    """An AnyValue as Python: scalars as themselves, arrays as lists, kvlists as dicts,
    bytes as hex, an empty AnyValue as None."""
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)  # bool_value, int_value, double_value


def _service(resource: dict) -> str:
    name = resource.get("service.name")
    return name if isinstance(name, str) and name else UNKNOWN_SERVICE


# --- JSON -----------------------------------------------------------------------------------

_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_AT_MESSAGE = re.compile(r" at [\w.\[\]]+\.?$")


def _load_json(body: bytes) -> Any:
    try:
        return load_json(body)
    except JsonBodyError as e:
        msg = str(e)
        if msg.startswith("invalid JSON"):
            msg = "body is not valid JSON" + msg[len("invalid JSON"):]
        raise OtlpDecodeError(msg) from None


def _from_json(d: Any, allow_base64: bool, allow_tempo: bool) -> DecodedExport:
    if not isinstance(d, dict):
        raise OtlpDecodeError(f"expected a JSON object, got {_json_type(d)}")
    path = ""
    if allow_tempo and "trace" in d and not ("resourceSpans" in d or "batches" in d):
        d = d["trace"]  # Tempo v2 wraps the OTLP/JSON request
        path = "trace."
        if not isinstance(d, dict):
            raise OtlpDecodeError(f"expected an object, got {_json_type(d)}", "trace")
    names = ("resourceSpans", "resource_spans", "batches") if allow_tempo else ("resourceSpans", "resource_spans")
    key, resource_spans = _pick(d, names)
    result = DecodedExport([])
    trace_ids: dict[bytes, str] = {}
    for i, rs in enumerate(_list(resource_spans, path + key)):
        where = f"{path}{key}[{i}]"
        if not isinstance(rs, dict):
            raise OtlpDecodeError(f"expected an object, got {_json_type(rs)}", where)
        ss_key, scope_spans = _pick(rs, ("scopeSpans", "scope_spans", "instrumentationLibrarySpans",
                                         "instrumentation_library_spans"))
        scope_spans = _list(scope_spans, f"{where}.{ss_key}")
        try:
            resource = _attrs(_parse(rs.get("resource") or {}, Resource, f"{where}.resource").attributes)
        except OtlpDecodeError as e:
            result.reject(e, sum(len(ss["spans"]) for ss in scope_spans
                                 if isinstance(ss, dict) and isinstance(ss.get("spans"), list)))
            continue
        service = _service(resource)
        for j, ss in enumerate(scope_spans):
            where_ss = f"{where}.{ss_key}[{j}]"
            if not isinstance(ss, dict):
                raise OtlpDecodeError(f"expected an object, got {_json_type(ss)}", where_ss)
            spans = _list(ss.get("spans"), f"{where_ss}.spans")
            scope_key, scope_d = _pick(ss, ("scope", "instrumentationLibrary", "instrumentation_library"))
            try:
                scope = _parse(scope_d or {}, InstrumentationScope, f"{where_ss}.{scope_key}").name
            except OtlpDecodeError as e:
                result.reject(e, len(spans))
                continue
            for k, sp in enumerate(spans):
                where_sp = f"{where_ss}.spans[{k}]"
                try:
                    result.spans.append(_json_span(sp, where_sp, service, resource, scope, trace_ids, allow_base64))
                except OtlpDecodeError as e:
                    result.reject(e)
    return result


_ID_KEYS = {"traceId": "traceId", "trace_id": "traceId", "spanId": "spanId", "span_id": "spanId",
            "parentSpanId": "parentSpanId", "parent_span_id": "parentSpanId"}


def _json_span(sp: Any, where: str, service: str, resource: dict, scope: str, trace_ids: dict[bytes, str],
               allow_base64: bool) -> Span:
    if not isinstance(sp, dict):
        raise OtlpDecodeError(f"expected an object, got {_json_type(sp)}", where)
    ids: dict[str, tuple[str, Any] | None] = {"traceId": None, "spanId": None, "parentSpanId": None}  # -> (key, value)
    rest = {}
    for k, v in sp.items():
        if k in _ID_KEYS:
            ids[_ID_KEYS[k]] = (k, v)
        elif k != "links":  # the model keeps no links; their hex ids would read as base64
            rest[k] = v
    msg = _parse(rest, PbSpan, where)
    for name, nbytes in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
        key, value = ids[name] or (name, None)
        if name == "parentSpanId" and value in (None, ""):
            continue
        try:
            setattr(msg, _PB_ID[name], _json_id(value, nbytes, allow_base64))
        except ValueError as e:
            raise OtlpDecodeError(str(e), f"{where}.{key}") from None
    try:
        return _span(msg, service, resource, scope, trace_ids)
    except _Invalid as e:
        given = ids.get(e.field)
        raise OtlpDecodeError(e.reason, f"{where}.{given[0] if given else e.field}") from None


_PB_ID = {"traceId": "trace_id", "spanId": "span_id", "parentSpanId": "parent_span_id"}


def _json_id(value: Any, nbytes: int, allow_base64: bool) -> bytes:
    digits = 2 * nbytes
    if value is None:
        raise ValueError(f"missing; expected {digits} hex digits")
    if not isinstance(value, str):
        raise ValueError(f"expected a string of {digits} hex digits, got {_json_type(value)}")
    if len(value) == digits:
        try:
            raw = bytes.fromhex(value)
            if len(raw) == nbytes:  # fromhex skips spaces; an id has none
                return raw
        except ValueError:
            pass
    elif allow_base64 and len(value) in (4 * ((nbytes + 2) // 3), (8 * nbytes + 5) // 6):
        try:
            raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            if len(raw) == nbytes:
                return raw
        except binascii.Error:
            pass
    also = " or base64" if allow_base64 else ""
    raise ValueError(f"expected {digits} hex digits{also}, got {_short(value)}")


def _parse(d: Any, message_type, where: str):
    """One leaf message through protobuf's JSON mapping (camelCase or snake_case keys, enums as
    numbers or names, 64-bit integers as strings or numbers, unknown keys ignored)."""
    if not isinstance(d, dict):
        raise OtlpDecodeError(f"expected an object, got {_json_type(d)}", where)
    try:
        return json_format.ParseDict(d, message_type(), ignore_unknown_fields=True)
    except json_format.ParseError as e:
        # "Failed to parse events field: Failed to parse timeUnixNano field: ..." -> a path.
        msg = str(e)
        while m := _FAILED_FIELD.match(msg):
            where += "." + m[1]
            msg = msg[m.end():]
        raise OtlpDecodeError(_AT_MESSAGE.sub("", msg).rstrip(".") or "invalid", where) from None
    except RecursionError:
        raise OtlpDecodeError("nested too deeply", where) from None


def _pick(d: dict, names: tuple[str, ...]) -> tuple[str, Any]:
    for name in names:
        if name in d:
            return name, d[name]
    return names[0], None


def _list(v: Any, where: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise OtlpDecodeError(f"expected a list, got {_json_type(v)}", where)
    return v


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return "an object"


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")
