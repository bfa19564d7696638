"""The OTLP/HTTP trace receiver (``POST /v1/traces``) and the built-in store's trace lookup
(``GET /api/traces/{trace_id}``).

Follows https://opentelemetry.io/docs/specs/otlp/#otlphttp: binary protobuf or JSON, optionally
gzip; 200 with an ExportTraceServiceResponse in the request's encoding, carrying
``partial_success`` when some spans were rejected; failures as a ``google.rpc.Status`` in that
encoding (400 with a BadRequest detail naming the field, 401, 413, 415). The order is: who is
asking, what they send, how big it is, then decode. Decoding and storing run in a worker thread,
and nothing is stored for a refused request.

aiohttp's server inflates gzip request bodies itself (in bounded steps; its default
``auto_decompress``), so ``read_body``'s limit already bounds the inflated size; if a runner turns
that off, the body arrives compressed and :func:`otlp.gunzip` inflates it under the same limit.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable

from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from common.http import BodyTooLarge, BodyUnreadable, json_error, read_body
from responder.evidence.traces import otlp
from responder.evidence.traces.store import SpanStore

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_UNKNOWN = object()
_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
# gRPC codes for Status.code: OTLP does not use them, but they help whoever reads the body.
_GRPC_CODE = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 413: code_pb2.RESOURCE_EXHAUSTED,
              415: code_pb2.UNIMPLEMENTED}


class OtlpReceiver:
    """Accepts OTLP/HTTP trace exports into ``store``; ``authorize(request)`` says who may."""

    def __init__(self, store: SpanStore, authorize: Callable[[web.Request], bool], max_body_bytes: int) -> None:
        self.store = store
        self.authorize = authorize
        self.max_body_bytes = max_body_bytes

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self.handle)
        app.router.add_get("/api/traces/{trace_id}", self.handle_trace)

    async def handle(self, request: web.Request) -> web.Response:
        """POST /v1/traces."""
        media = otlp.media_type(request.content_type)
        as_json = media == otlp.JSON  # failures are answered in the request's encoding too
        if not self.authorize(request):
            return _refuse(request, 401, "unauthorized: send the bearer token in the Authorization header", as_json,
                           headers={"WWW-Authenticate": 'Bearer realm="llmslo"'})
        if media not in (otlp.PROTOBUF, otlp.JSON):
            return _refuse(request, 415, f"content type {request.headers.get('Content-Type', '(none)')!r} is not "
                                         f"supported; send {otlp.PROTOBUF} or {otlp.JSON}", as_json)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("gzip", "identity"):
            return _refuse(request, 415, f"content encoding {encoding!r} is not supported; send gzip or none",
                           as_json)
        limit = self.max_body_bytes
        try:
            body = await read_body(request, limit)
        except (BodyUnreadable, BodyTooLarge) as e:  # answered in the exporter's own encoding
            status = 400 if isinstance(e, BodyUnreadable) else 413  # 400: not gzip after all
            inflated = " once inflated" if isinstance(e, BodyTooLarge) and not e.declared and encoding == "gzip" else ""
            refused = _refuse(request, status, f"{e}{inflated}", as_json)
            refused.force_close()  # the rest of the body is not read
            return refused
        still_gzip = encoding == "gzip" and not _inflated_by_server(request, body)
        try:
            decoded = await asyncio.to_thread(self._decode_and_store, body, media, "gzip" if still_gzip else None)
        except otlp.OtlpTooLarge as e:
            return _refuse(request, 413, str(e), as_json)
        except otlp.OtlpUnsupported as e:
            return _refuse(request, 415, str(e), as_json)
        except otlp.OtlpDecodeError as e:
            return _refuse(request, 400, str(e), as_json, error=e)
        if decoded.rejected and not decoded.spans:
            first = decoded.errors[0]
            return _refuse(request, 400, decoded.summary(), as_json, error=first)
        response = ExportTraceServiceResponse()
        if decoded.rejected:
            response.partial_success.rejected_spans = decoded.rejected
            response.partial_success.error_message = decoded.summary()
            log.warning("event=otlp_partial accepted=%s rejected=%s reason=%r peer=%s", len(decoded.spans),
                        decoded.rejected, str(decoded.errors[0]), request.remote)
        return _encode(response, as_json, 200)

    def _decode_and_store(self, body: bytes, media: str, encoding: str | None) -> otlp.DecodedExport:
        decoded = otlp.decode_export(body, media, encoding, self.max_body_bytes)
        if decoded.spans:
            self.store.add(decoded.spans)
        return decoded

    async def handle_trace(self, request: web.Request) -> web.Response:
        """GET /api/traces/{trace_id}: every stored span of one trace, by start time."""
        if not self.authorize(request):
            return web.json_response({"error": "unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="llmslo"'})
        trace_id = request.match_info["trace_id"]
        if not _TRACE_ID.fullmatch(trace_id):
            return json_error(400, f"trace id {trace_id[:64]!r}: expected 32 hex digits")
        trace_id = trace_id.lower()

        def lookup() -> list[dict] | None:
            spans = self.store.trace(trace_id)
            return [s.to_dict() for s in spans] if spans else None

        spans = await asyncio.to_thread(lookup)
        if spans is None:
            return json_error(404, f"no span of trace {trace_id} is in the store (never received, or evicted)")
        return web.json_response({"trace_id": trace_id, "spans": spans})


def _inflated_by_server(request: web.Request, body: bytes) -> bool:
    """Whether aiohttp already inflated this gzip body (see the module docstring)."""
    compressed = getattr(request.content, "total_compressed_bytes", _UNKNOWN)
    if compressed is _UNKNOWN:  # an aiohttp without that counter: still gzip if it starts like gzip
        return body[:2] != _GZIP_MAGIC
    return compressed is not None  # aiohttp counts compressed bytes only when it inflates


def _refuse(request: web.Request, status: int, message: str, as_json: bool,
            headers: dict[str, str] | None = None, error: otlp.OtlpDecodeError | None = None) -> web.Response:
    """A failure as OTLP wants it: a google.rpc.Status, with a BadRequest detail for bad data."""
    log.info("event=otlp_refused status=%s reason=%r peer=%s", status, message, request.remote)
    body = status_pb2.Status(code=_GRPC_CODE.get(status, code_pb2.UNKNOWN), message=message)
    if error is not None and error.field:
        detail = error_details_pb2.BadRequest()
        detail.field_violations.add(field=error.field, description=error.reason)
        body.details.add().Pack(detail)
    return _encode(body, as_json, status, headers)


def _encode(message, as_json: bool, status: int, headers: dict[str, str] | None = None) -> web.Response:
    if as_json:
        return web.Response(body=json.dumps(json_format.MessageToDict(message)).encode(), status=status,
                            content_type=otlp.JSON, headers=headers)
    return web.Response(body=message.SerializeToString(), status=status, content_type=otlp.PROTOBUF,
                        headers=headers)
