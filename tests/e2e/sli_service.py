"""A small instrumented chat service for the real alerting-path test.

Each ``POST /v1/chat`` calls an OpenAI-shaped provider over loopback HTTP and answers with the
provider's status. It exports what a real LLM service would: spans through the OpenTelemetry SDK's
OTLP/HTTP exporter (a SERVER span, and a GenAI CLIENT span per provider call with the semantic
conventions' attributes), and SLI metrics for Prometheus (requests by code, end-to-end latency, time
to first token), named as ``llmslo rules generate`` expects.

    python -m tests.e2e.sli_service --port P --provider URL --otlp URL --token T --service NAME
"""
from __future__ import annotations

import argparse
import time

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
MODEL = "gpt-4o-mini"


def build_app(provider: str, service: str, tracer: trace.Tracer) -> web.Application:
    registry = CollectorRegistry()
    requests = Counter("llm_requests", "Chat requests by HTTP status", ["service", "code"], registry=registry)
    duration = Histogram("llm_request_duration_seconds", "End-to-end request latency", ["service"],
                         buckets=BUCKETS, registry=registry)
    ttft = Histogram("llm_time_to_first_token_seconds", "Time to the provider's first byte", ["service"],
                     buckets=BUCKETS, registry=registry)
    host, _, port = provider.split("//", 1)[1].partition(":")

    async def chat(request: web.Request) -> web.Response:
        started = time.monotonic()
        session: aiohttp.ClientSession = request.app["session"]
        with tracer.start_as_current_span("POST /v1/chat", kind=SpanKind.SERVER,
                                          attributes={"http.request.method": "POST", "http.route": "/v1/chat"}) as srv:
            with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT, attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": MODEL, "server.address": host, "server.port": int(port.split("/")[0])}) as span:
                async with session.post(provider + "/v1/chat/completions",
                                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}) as r:
                    first_byte = time.monotonic() - started
                    body = await r.json(content_type=None)
                    span.set_attribute("http.response.status_code", r.status)
                    if r.status >= 400:
                        span.set_attribute("error.type", str(r.status))
                        span.set_status(Status(StatusCode.ERROR, f"provider answered {r.status}"))
                    else:
                        span.set_attribute("gen_ai.response.model", body.get("model", MODEL))
                        span.set_attribute("gen_ai.usage.input_tokens", body["usage"]["prompt_tokens"])
                        span.set_attribute("gen_ai.usage.output_tokens", body["usage"]["completion_tokens"])
            srv.set_attribute("http.response.status_code", r.status)
            if r.status >= 500:
                srv.set_status(Status(StatusCode.ERROR))
        requests.labels(service, str(r.status)).inc()
        duration.labels(service).observe(time.monotonic() - started)
        if r.status < 400:
            ttft.labels(service).observe(first_byte)
        return web.json_response(body, status=r.status)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def session_ctx(app: web.Application):
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    app = web.Application()
    app.router.add_post("/v1/chat", chat)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(session_ctx)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--provider", required=True)
    ap.add_argument("--otlp", required=True, help="the responder's OTLP/HTTP traces endpoint")
    ap.add_argument("--token", required=True)
    ap.add_argument("--service", default="chat-api")
    args = ap.parse_args()
    provider = TracerProvider(resource=Resource.create({"service.name": args.service}))
    exporter = OTLPSpanExporter(endpoint=args.otlp, headers={"Authorization": f"Bearer {args.token}"},
                                compression=Compression.Gzip)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    try:
        web.run_app(build_app(args.provider, args.service, provider.get_tracer("sli_service")),
                    host="127.0.0.1", port=args.port, print=None)
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
