"""The lab's LLM RAG service: the workload every lab fault is aimed at and every attribution is
scored on. It behaves, and is instrumented, the way a production service built on the official
SDKs would be, so the responder sees nothing it would not see in production.

    python -m lab.rag_service --port P --pg-dsn DSN --provider-base-url URL --ca-file C \\
        --otlp-endpoint URL --otlp-token T --service rag-api --control-token T2 [--model gpt-4o-mini]

``POST /v1/answer {"question": str}`` runs, under one SERVER span:
1. the input guardrail, in process (INTERNAL span ``apply_guardrail input``,
   ``gen_ai.operation.name=apply_guardrail``): a pattern check plus a little CPU, then the
   lab-controlled extra delay; with the lab's block fraction it fails closed (the span's
   ``gen_ai.guardrail.result.value`` is GUARDRAIL_INTERVENED, ``error.type`` "blocked") -> 503;
   a question that trips the pattern check is refused -> 400;
2. retrieval from PostgreSQL through asyncpg (CLIENT span ``SELECT lab_retrieve``,
   ``db.system.name=postgresql``, ``db.operation.name``, ``server.address``/``server.port``):
   a database error -> 500 (``error.type`` = SQLSTATE), a broken connection (SQLSTATE class 08)
   or an unreachable server -> 503, a timeout -> 504;
3. prompt assembly: a few ms of CPU, as templating and tokenising cost, so CPU faults show;
4. a streamed chat completion through the official ``openai`` SDK (AsyncOpenAI,
   ``max_retries=2``) over TLS to the provider's hostname, with an HTTP client that keeps no idle
   connection, so every request resolves and connects anew (DNS and connect faults matter).
   GenAI CLIENT span ``chat {model}`` (provider ``openai``, request/response model, usage,
   ``gen_ai.response.time_to_first_chunk`` in seconds, server address/port, ``error.type`` on
   failure: the provider's HTTP status, else the SDK's exception class), with one HTTP CLIENT child
   span per attempt (from event hooks of httpx2, the SDK's HTTP client, and its transport's
   ``trace`` extension: method, URL,
   status, ``http.request.resend_count`` on retries, ``error.type`` = status or transport
   exception class, connect/TLS phase events). Provider 429 after the SDK's retries -> 429;
   503/529 -> 503; timeout -> 504; any other provider failure -> 502.

Also: ``GET /metrics`` (Prometheus, own registry: ``llm_requests_total{service,code}``,
``llm_request_duration_seconds{service}``, ``llm_time_to_first_token_seconds{service}`` from
request arrival to the provider's first chunk, with the buckets ``llmslo rules generate``
recommends), ``GET /health``, and ``PUT``/``GET /lab/faults`` (bearer control token):
``{"policy_delay_ms": int, "policy_block_fraction": float}``; fields sent are set, fields left
out keep their value, null restores the default (0). Every answer carries ``x-trace-id``.

Spans go to ``--otlp-endpoint`` (OTLP/HTTP protobuf, gzip, bearer token) through a batch
processor flushing every second; shutdown (SIGTERM/SIGINT) flushes what is left.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import random
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx2
import openai
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from responder.slo.rules import RECOMMENDED_LATENCY_BUCKETS, RECOMMENDED_TTFT_BUCKETS

log = logging.getLogger("lab.rag_service")

RETRIEVE_SQL = "SELECT * FROM lab_retrieve($1, 4)"
TOP_K = 4
GUARDRAIL_NAME = "input-policy"
# CPU per request, in sha256 rounds (about 1 ms per 2,000 on the development machine): the
# guardrail's scan and the prompt's templating/tokenising. Enough for CPU contention and CPU
# quota faults to show in every in-process span, small next to the provider's time.
GUARDRAIL_WORK_ROUNDS = 1_000
PROMPT_WORK_ROUNDS = 4_000
MAX_QUESTION_CHARS = 4_000
PROVIDER_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)
DB_ACQUIRE_TIMEOUT_S = 10.0
DB_QUERY_TIMEOUT_S = 15.0
# What the guardrail refuses outright (the client's fault, 400): a prompt-injection tell.
_INJECTION_RE = re.compile(r"ignore (?:all |any )?(?:previous|prior|above) instructions|"
                           r"reveal (?:the|your) system prompt", re.I)
SYSTEM_PROMPT = ("You answer questions about running LLM services. Use only the context below and cite the "
                 "chunk ids you used.")
# Questions a load generator can send: each matches several chunks of lab.postgres's seed.
SAMPLE_QUESTIONS = (
    "How should retries handle 429 responses and the retry-after header?",
    "Why is time to first token high when streaming?",
    "Which GIN index settings help full-text retrieval ranking?",
    "How do we keep prompt injection out with an input policy?",
    "What causes tail latency in the connection pool?",
    "How do packet loss and DNS resolution slow the TLS handshake?",
    "When does a memory limit lead to an OOM kill?",
    "How do we measure burn rate with OpenTelemetry spans?",
    "What is a good fallback model when the provider is overloaded?",
    "How do CPU quota and run queue delays affect latency?",
)


# --- provider HTTP attempts as spans -------------------------------------------------------------
@dataclass
class _Attempts:
    """The HTTP attempts of one provider call (one ``chat`` span)."""
    count: int = 0
    spans: list = field(default_factory=list)


_ATTEMPTS: ContextVar[_Attempts | None] = ContextVar("lab_provider_attempts", default=None)
_SPAN_KEY = "lab.attempt_span"  # request extension carrying the attempt's span (transports ignore unknown keys)


class ProviderAttemptSpans:
    """httpx event hooks that make each HTTP attempt an HTTP CLIENT span, child of the current
    (``chat``) span. The response hook sees statuses; connect failures, resets and timeouts never
    reach it, so the request hook also installs the transport's ``trace`` extension, which reports
    every phase (connect, TLS, headers, body, close) and its failure: the span ends when the
    response is closed or a phase fails."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def hooks(self) -> dict[str, list]:
        return {"request": [self.on_request], "response": [self.on_response]}

    async def on_request(self, request: httpx2.Request) -> None:
        attempts = _ATTEMPTS.get()
        n = 0
        if attempts is not None:
            n, attempts.count = attempts.count, attempts.count + 1
        url = request.url
        attrs: dict[str, Any] = {"http.request.method": request.method, "server.address": url.host,
                                 "server.port": url.port or (443 if url.scheme == "https" else 80),
                                 "url.full": str(url)}
        if n:
            attrs["http.request.resend_count"] = n
        span = self.tracer.start_span(request.method, kind=SpanKind.CLIENT, attributes=attrs)
        if attempts is not None:
            attempts.spans.append(span)
        request.extensions = {**request.extensions, "trace": partial(self._on_phase, span), _SPAN_KEY: span}

    async def on_response(self, response: httpx2.Response) -> None:
        span = response.request.extensions.get(_SPAN_KEY)
        if span is None or not span.is_recording():
            return
        status = response.status_code
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))

    @staticmethod
    async def _on_phase(span, name: str, info: dict) -> None:
        if not span.is_recording():
            return
        if name.endswith(".failed"):
            exc = info.get("exception")
            if not _has_error(span):
                span.set_attribute("error.type", type(exc).__name__ if exc is not None else "error")
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200] if exc is not None else None))
            span.end()
        elif name.endswith("response_closed.complete"):
            span.end()
        elif name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            # DNS + TCP connect, then the TLS handshake: connect-path faults show here.
            span.add_event(name.split(".")[1])


def _has_error(span) -> bool:
    attrs = getattr(span, "attributes", None) or {}
    return "error.type" in attrs


# --- the request path ------------------------------------------------------------------------------
class Failure(Exception):
    """A request that ends with ``status``; ``error_type`` is the cause's class, for the log."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type or str(status)


@dataclass
class Settings:
    pg_dsn: str
    provider_base_url: str
    ca_file: str
    service: str = "rag-api"
    control_token: str = ""
    model: str = "gpt-4o-mini"
    api_key: str = "lab-key"


@dataclass
class PolicyFaults:
    """What the lab injects into the guardrail (PUT /lab/faults)."""
    policy_delay_ms: int = 0
    policy_block_fraction: float = 0.0

    def update(self, body: Any) -> None:
        """Apply a PUT body; ValueError naming the field when it is not acceptable (nothing changed)."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object with policy_delay_ms and/or policy_block_fraction")
        unknown = sorted(set(body) - {"policy_delay_ms", "policy_block_fraction"})
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}: expected policy_delay_ms, policy_block_fraction")
        delay, frac = self.policy_delay_ms, self.policy_block_fraction
        if "policy_delay_ms" in body:
            v = body["policy_delay_ms"]
            if v is None:
                v = 0
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 600_000:
                raise ValueError("policy_delay_ms must be an integer from 0 to 600000 (milliseconds)")
            delay = v
        if "policy_block_fraction" in body:
            v = body["policy_block_fraction"]
            if v is None:
                v = 0.0
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError("policy_block_fraction must be a number from 0 to 1")
            frac = float(v)
        self.policy_delay_ms, self.policy_block_fraction = delay, frac

    def to_dict(self) -> dict[str, Any]:
        return {"policy_delay_ms": self.policy_delay_ms, "policy_block_fraction": self.policy_block_fraction}


class RagService:
    def __init__(self, settings: Settings, tracer: trace.Tracer) -> None:
        self.s = settings
        self.tracer = tracer
        self.faults = PolicyFaults()
        self.pool: asyncpg.Pool | None = None
        self.http: httpx2.AsyncClient | None = None
        self.llm: openai.AsyncOpenAI | None = None
        db = urlsplit(settings.pg_dsn)
        self.db_attrs: dict[str, str | int] = {
            "db.system.name": "postgresql", "db.namespace": db.path.lstrip("/") or "postgres",
            "db.operation.name": "SELECT", "db.query.summary": "SELECT lab_retrieve",
            "db.query.text": RETRIEVE_SQL, "server.address": db.hostname or "localhost",
            "server.port": db.port or 5432}
        prov = urlsplit(settings.provider_base_url)
        self.llm_attrs: dict[str, str | int] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": settings.model, "server.address": prov.hostname or "",
            "server.port": prov.port or (443 if prov.scheme == "https" else 80)}
        self.registry = CollectorRegistry()
        self.requests = Counter("llm_requests", "Answer requests by HTTP status answered", ["service", "code"],
                                registry=self.registry)
        self.duration = Histogram("llm_request_duration_seconds", "End-to-end answer latency", ["service"],
                                  buckets=RECOMMENDED_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("llm_time_to_first_token_seconds",
                              "From request arrival to the provider's first streamed chunk", ["service"],
                              buckets=RECOMMENDED_TTFT_BUCKETS, registry=self.registry)

    # --- lifecycle ---
    async def startup(self, app: web.Application) -> None:
        # No idle connections: every provider call resolves the hostname and connects anew.
        self.http = httpx2.AsyncClient(verify=self.s.ca_file, limits=httpx2.Limits(max_keepalive_connections=0),
                                       timeout=PROVIDER_TIMEOUT, trust_env=False,
                                       event_hooks=ProviderAttemptSpans(self.tracer).hooks())
        self.llm = openai.AsyncOpenAI(api_key=self.s.api_key, base_url=self.s.provider_base_url, max_retries=2,
                                      timeout=PROVIDER_TIMEOUT, http_client=self.http)
        # min_size=0: the service starts even when the database is not reachable yet.
        self.pool = await asyncpg.create_pool(self.s.pg_dsn, min_size=0, max_size=20,
                                              command_timeout=DB_QUERY_TIMEOUT_S,
                                              max_inactive_connection_lifetime=60)
        try:
            async with self.pool.acquire(timeout=5):
                pass
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("event=db_warmup_failed error=%s", type(e).__name__)
        log.info("event=started service=%s provider=%s db=%s:%s", self.s.service, self.s.provider_base_url,
                 self.db_attrs["server.address"], self.db_attrs["server.port"])

    async def cleanup(self, app: web.Application) -> None:
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 5)
            except (TimeoutError, OSError):
                self.pool.terminate()
        if self.llm is not None:
            await self.llm.close()
        if self.http is not None:
            await self.http.aclose()

    # --- handlers ---
    async def answer(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        first_chunk_at: list[float] = []
        with self.tracer.start_as_current_span(
                "POST /v1/answer", context=extract(request.headers), kind=SpanKind.SERVER,
                record_exception=False, set_status_on_exception=False,
                attributes={"http.request.method": "POST", "http.route": "/v1/answer", "url.path": request.path,
                            "url.scheme": "http", "server.address": request.host.split(":")[0],
                            "server.port": request.url.port or 80,
                            "client.address": request.remote or "",
                            "user_agent.original": request.headers.get("User-Agent", "")}) as srv:
            trace_id = format(srv.get_span_context().trace_id, "032x")
            try:
                body = await self._answer(request, first_chunk_at)
                status = 200
            except Failure as f:
                status, body = f.status, {"error": {"status": f.status, "message": f.message}}
                if status >= 500 or status == 429:
                    # HTTP conventions: a server span's error.type is the status it answered.
                    srv.set_attribute("error.type", str(status))
                    srv.set_status(Status(StatusCode.ERROR, f.message))
                    log.warning("event=request_failed status=%d error_type=%s trace_id=%s message=%s", status,
                                f.error_type, trace_id, f.message)
            except Exception as e:  # a bug must still answer, be counted and be traced
                status, body = 500, {"error": {"status": 500, "message": "internal error"}}
                srv.set_attribute("error.type", "500")
                srv.add_event("exception", {"exception.type": type(e).__qualname__, "exception.message": str(e)[:500]})
                srv.set_status(Status(StatusCode.ERROR, str(e)[:200]))
                log.exception("event=request_crashed trace_id=%s", trace_id)
            srv.set_attribute("http.response.status_code", status)
        self.requests.labels(self.s.service, str(status)).inc()
        self.duration.labels(self.s.service).observe(time.monotonic() - started)
        if first_chunk_at:
            self.ttft.labels(self.s.service).observe(first_chunk_at[0] - started)
        return web.json_response(body, status=status, headers={"x-trace-id": trace_id})

    async def _answer(self, request: web.Request, first_chunk_at: list[float]) -> dict:
        try:
            payload = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Failure(400, "body must be JSON: {\"question\": \"...\"}") from None
        except web.HTTPRequestEntityTooLarge:
            raise Failure(413, "body is too large (the limit is 1 MiB)") from None
        question = payload.get("question") if isinstance(payload, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise Failure(400, "field question must be a non-empty string")
        if len(question) > MAX_QUESTION_CHARS:
            raise Failure(400, f"field question is longer than {MAX_QUESTION_CHARS} characters")
        await self._guardrail(question)
        chunks = await self._retrieve(question)
        messages = self._prompt(question, chunks)
        text, model, usage = await self._chat(messages, first_chunk_at)
        return {"answer": text, "model": model, "sources": [c["chunk_id"] for c in chunks], "usage": usage}

    async def _guardrail(self, question: str) -> None:
        with self.tracer.start_as_current_span(
                "apply_guardrail input", kind=SpanKind.INTERNAL, record_exception=False,
                set_status_on_exception=False,
                attributes={"gen_ai.operation.name": "apply_guardrail",
                            "gen_ai.guardrail.component.name": GUARDRAIL_NAME,
                            "gen_ai.guardrail.result.type": "action"}) as span:
            _burn(question, GUARDRAIL_WORK_ROUNDS)
            injected = _INJECTION_RE.search(question) is not None
            faults = self.faults
            if faults.policy_delay_ms > 0:
                await asyncio.sleep(faults.policy_delay_ms / 1000)
            fail_closed = faults.policy_block_fraction > 0 and random.random() < faults.policy_block_fraction
            if injected or fail_closed:
                span.set_attribute("gen_ai.guardrail.result.value", "GUARDRAIL_INTERVENED")
                span.set_attribute("error.type", "blocked")
                span.set_status(Status(StatusCode.ERROR, "blocked by the input policy"))
                if injected:
                    raise Failure(400, "the question was refused by the input policy", "blocked")
                # The policy engine is treated as unavailable and the service fails closed.
                raise Failure(503, "the input policy is not admitting requests (failing closed)", "blocked")
            span.set_attribute("gen_ai.guardrail.result.value", "NONE")

    async def _retrieve(self, question: str) -> list[dict]:
        assert self.pool is not None
        with self.tracer.start_as_current_span("SELECT lab_retrieve", kind=SpanKind.CLIENT, record_exception=False,
                                               set_status_on_exception=False, attributes=self.db_attrs) as span:
            try:
                async with self.pool.acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn:
                    rows = await conn.fetch(RETRIEVE_SQL, question, timeout=DB_QUERY_TIMEOUT_S)
            except asyncpg.PostgresError as e:
                code = e.sqlstate or type(e).__name__
                span.set_attribute("db.response.status_code", code)
                _fail(span, code, e)
                if isinstance(e, asyncpg.PostgresConnectionError):  # SQLSTATE class 08: the connection broke
                    raise Failure(503, f"retrieval backend connection failed: {str(e)[:200]}", code) from None
                raise Failure(500, f"retrieval failed: {str(e)[:200]}", code) from None
            except TimeoutError as e:
                _fail(span, "TimeoutError", e)
                raise Failure(504, "retrieval timed out", "TimeoutError") from None
            except (OSError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as e:
                _fail(span, type(e).__name__, e)
                raise Failure(503, f"retrieval backend unreachable: {type(e).__name__}", type(e).__name__) from None
            span.set_attribute("db.response.returned_rows", len(rows))
            return [dict(r) for r in rows]

    def _prompt(self, question: str, chunks: list[dict]) -> list[ChatCompletionMessageParam]:
        context = "\n\n".join(f"[{c['chunk_id']}] {c['doc']}: {c['body']}" for c in chunks) or "(no context found)"
        _burn(context + question, PROMPT_WORK_ROUNDS)  # templating and token counting
        return [{"role": "system", "content": f"{SYSTEM_PROMPT}\n\nContext:\n{context}"},
                {"role": "user", "content": question}]

    async def _chat(self, messages: list[ChatCompletionMessageParam], first_chunk_at: list[float]) -> tuple[str, str, dict]:
        assert self.llm is not None
        model = self.s.model
        with self.tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, record_exception=False,
                                               set_status_on_exception=False, attributes=self.llm_attrs) as span:
            attempts = _Attempts()
            token = _ATTEMPTS.set(attempts)
            t0 = time.monotonic()
            parts: list[str] = []
            usage: dict = {}
            response_model = ""
            try:
                stream = await self.llm.chat.completions.create(
                    model=model, messages=messages, stream=True, stream_options={"include_usage": True})
                async with stream:
                    async for chunk in stream:
                        if not first_chunk_at:
                            first_chunk_at.append(time.monotonic())
                            span.set_attribute("gen_ai.response.time_to_first_chunk", round(time.monotonic() - t0, 6))
                        response_model = chunk.model or response_model
                        if chunk.id:
                            span.set_attribute("gen_ai.response.id", chunk.id)
                        for choice in chunk.choices:
                            if choice.delta and choice.delta.content:
                                parts.append(choice.delta.content)
                            if choice.finish_reason:
                                span.set_attribute("gen_ai.response.finish_reasons", [choice.finish_reason])
                        if chunk.usage is not None:
                            usage = {"input_tokens": chunk.usage.prompt_tokens,
                                     "output_tokens": chunk.usage.completion_tokens}
            except openai.OpenAIError as e:  # statuses after the retries, connection errors, a broken stream
                _end_open_attempts(attempts, e)
                status, error_type, message = _provider_failure(e, attempts.count)
                _fail(span, error_type, e)
                raise Failure(status, message, error_type) from None
            finally:
                _ATTEMPTS.reset(token)
                _end_open_attempts(attempts, None)
            if response_model:
                span.set_attribute("gen_ai.response.model", response_model)
            if usage:
                span.set_attribute("gen_ai.usage.input_tokens", usage["input_tokens"])
                span.set_attribute("gen_ai.usage.output_tokens", usage["output_tokens"])
            return "".join(parts), response_model or model, usage

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": self.s.service})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not self.s.control_token or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode(), self.s.control_token.encode())

    async def put_faults(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "send the control token as Authorization: Bearer ..."}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="lab"'})
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        try:
            self.faults.update(body)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        log.info("event=policy_faults %s", " ".join(f"{k}={v}" for k, v in self.faults.to_dict().items()))
        return web.json_response(self.faults.to_dict())

    async def get_faults(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "send the control token as Authorization: Bearer ..."}, status=401)
        return web.json_response(self.faults.to_dict())


def _burn(text: str, rounds: int) -> None:
    h = hashlib.sha256(text.encode()).digest()
    for _ in range(rounds):
        h = hashlib.sha256(h).digest()


def _fail(span, error_type: str, exc: BaseException) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
    # The exception event without a stack trace: the class and message are what a reader needs.
    span.add_event("exception", {"exception.type": type(exc).__qualname__, "exception.message": str(exc)[:500]})


def _end_open_attempts(attempts: _Attempts, exc: BaseException | None) -> None:
    """End the attempt spans no transport phase closed (a failure before the first phase, e.g. a
    pool timeout), classed by the failure's cause when there was one."""
    for s in attempts.spans:
        if s.is_recording():
            if exc is not None and not _has_error(s):
                s.set_attribute("error.type", type(exc.__cause__ or exc).__name__)
                s.set_status(Status(StatusCode.ERROR))
            s.end()


def _provider_failure(e: openai.OpenAIError, attempts: int) -> tuple[int, str, str]:
    """(status to answer, the chat span's error.type, message) for a failed provider call:
    error.type is the provider's last HTTP status, else the SDK's exception class."""
    if isinstance(e, openai.APIStatusError):
        code = e.status_code
        return _gateway_status(code), str(code), f"provider answered {code} after {attempts} attempt(s)"
    if isinstance(e, openai.APITimeoutError):
        return 504, type(e).__name__, f"provider timed out after {attempts} attempt(s)"
    cause = type(e.__cause__).__name__ if e.__cause__ is not None else type(e).__name__
    return 502, type(e).__name__, f"provider unreachable or failed: {cause}"


def _gateway_status(provider_status: int) -> int:
    """What this service answers when the provider's ``provider_status`` outlived the retries."""
    if provider_status == 429:
        return 429  # the client should back off too; the SLO counts it
    if provider_status in (503, 529):
        return 503  # overloaded upstream
    if provider_status in (408, 504):
        return 504
    return 502


def build_app(settings: Settings, tracer: trace.Tracer) -> web.Application:
    svc = RagService(settings, tracer)
    app = web.Application()
    app["rag"] = svc
    app.router.add_post("/v1/answer", svc.answer)
    app.router.add_get("/health", svc.health)
    app.router.add_get("/metrics", svc.metrics)
    app.router.add_put("/lab/faults", svc.put_faults)
    app.router.add_get("/lab/faults", svc.get_faults)
    app.on_startup.append(svc.startup)
    app.on_cleanup.append(svc.cleanup)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lab.rag_service", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pg-dsn", required=True,
                    help="PostgreSQL DSN (asyncpg), e.g. postgresql://lab@127.0.0.1:5432/rag")
    ap.add_argument("--provider-base-url", required=True,
                    help="OpenAI-compatible base URL, e.g. https://api.provider.lab:8443/v1")
    ap.add_argument("--ca-file", required=True, help="CA/certificate the provider's TLS is verified against")
    ap.add_argument("--otlp-endpoint", required=True, help="OTLP/HTTP traces URL, e.g. http://127.0.0.1:8080/v1/traces")
    ap.add_argument("--otlp-token", default="", help="bearer token for the OTLP endpoint")
    ap.add_argument("--service", default="rag-api", help="service.name of the spans and the metrics' service label")
    ap.add_argument("--control-token", required=True, help="bearer token for PUT /lab/faults")
    ap.add_argument("--model", default="gpt-4o-mini")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx2", "httpcore2", "openai", "aiohttp.access"):  # a line per request or per retry
        logging.getLogger(noisy).setLevel(logging.WARNING)

    provider = TracerProvider(resource=Resource.create({"service.name": args.service}))
    headers = {"Authorization": f"Bearer {args.otlp_token}"} if args.otlp_token else {}
    exporter = OTLPSpanExporter(endpoint=args.otlp_endpoint, headers=headers, compression=Compression.Gzip,
                                timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    settings = Settings(pg_dsn=args.pg_dsn, provider_base_url=args.provider_base_url, ca_file=args.ca_file,
                        service=args.service, control_token=args.control_token, model=args.model)
    try:
        web.run_app(build_app(settings, provider.get_tracer("lab.rag_service")), host=args.host, port=args.port,
                    print=None, access_log=None)
    finally:
        provider.shutdown()  # flushes the spans still queued


if __name__ == "__main__":
    main()
