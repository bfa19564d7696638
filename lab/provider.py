"""The lab's LLM provider: an OpenAI-compatible chat-completions server over TLS, with faults.

It speaks the wire format the official ``openai`` SDK sends and parses:

- ``POST /v1/chat/completions`` (any non-empty bearer API key): a ``chat.completion`` JSON body,
  or with ``"stream": true`` server-sent events ``data: {chat.completion.chunk}`` ... ``data:
  [DONE]``: a first chunk with ``delta.role``, one chunk per token, a chunk with the
  ``finish_reason``, and, when ``stream_options.include_usage`` is true, a last chunk with empty
  ``choices`` and the ``usage`` (every other chunk then carries ``"usage": null``).
- ``GET /v1/models``, ``GET /health``.
- Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}``.

Timing: the response (status line and headers included) starts after the time to first token,
so a client sees the provider's latency both as time to the first response byte (what a kernel
probe sees) and as time to the first chunk (what the SDK's caller sees); later tokens follow at
the token rate. Every answer carries ``x-ratelimit-limit-requests``, ``-remaining-requests``
and ``-reset-requests`` (a nominal per-minute window) and an ``x-request-id``.

Faults, changed at runtime with ``PUT /lab/faults`` (bearer control token):
``{"throttle": {"fraction", "retry_after_s"} | null, "overload": {"fraction", "status": 529|503}
| null, "ttft_ms": int | null, "tokens_per_s": number | null, "seed": int | null}``. Keys left out
keep their value; null restores the healthy default. A throttled request gets 429 with
``retry-after`` (seconds) and ``x-ratelimit-remaining-requests: 0``; an overloaded one gets the
status with an OpenAI-style error body. Each request draws twice from a seeded random generator
(throttle, then overload), whatever the faults, so a seed fixes the sequence of verdicts.
``GET /lab/faults`` and ``GET /lab/stats`` (counts by status and by the SDK's
``x-stainless-retry-count``, and the most recent requests) take the same token.

Run as its own process::

    python -m lab.provider --port P --cert C --key K --control-token T \\
        [--ttft-ms 150 --tokens-per-s 200 --tokens 24 --seed N --owner-pid PID]

It exits when its owner process (by default its parent) is gone, so a killed lab run leaves no
provider behind; :class:`ProviderProcess` starts, drives and stops one, and :func:`sweep_stale`
kills any whose owner is dead.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import http.client
import json
import logging
import math
import os
import random
import secrets
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiohttp import web

from lab import process
from lab.tls import self_signed, server_context

log = logging.getLogger("lab.provider")

DEFAULT_HOSTNAME = "api.provider.lab"
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
OVERLOAD_STATUSES = (529, 503)
FAULT_KEYS = ("throttle", "overload", "ttft_ms", "tokens_per_s", "seed")
MAX_TTFT_MS = 120_000
MAX_RETRY_AFTER_S = 600
MAX_TOKENS_PER_S = 100_000.0
# The reply's text, one word per token, the same for every request so that streamed and
# non-streamed answers can be compared.
WORDS = ("Retrieval", " augmented", " answers", " cite", " the", " passages", " they", " were", " given",
         ",", " and", " this", " one", " comes", " from", " the", " lab", "'s", " provider", " stand", "-in",
         " at", " a", " steady", " pace", ".")


# -- faults


@dataclass
class Throttle:
    fraction: float
    retry_after_s: float = 1.0


@dataclass
class Overload:
    fraction: float
    status: int = 529


@dataclass
class Faults:
    """What PUT /lab/faults sets; None everywhere is the healthy provider."""

    throttle: Throttle | None = None
    overload: Overload | None = None
    ttft_ms: int | None = None
    tokens_per_s: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


class FaultsError(ValueError):
    """A PUT /lab/faults body that cannot be applied; ``param`` names the field."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


def _number(value: object, param: str, lo: float, hi: float, integer: bool = False,
            lo_open: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int))
            or (isinstance(value, float) and not math.isfinite(value))):
        kind = "an integer" if integer else "a number"
        raise FaultsError(param, f"{param} must be {kind}, not {json.dumps(value)}")
    if value < lo or value > hi or (lo_open and value == lo):
        lo_txt = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
        raise FaultsError(param, f"{param} must be {lo_txt} and at most {hi:g}, not {value}")
    return value


def _object(value: object, param: str, known: tuple[str, ...], required: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise FaultsError(param, f"{param} must be an object or null, not {json.dumps(value)}")
    for k in value:
        if k not in known:
            raise FaultsError(f"{param}.{k}", f"unknown key {param}.{k} (expected {', '.join(known)})")
    for k in required:
        if k not in value:
            raise FaultsError(f"{param}.{k}", f"{param}.{k} is required")
    return value


def parse_faults(body: object, current: Faults) -> tuple[Faults, tuple[bool, int | None]]:
    """The faults after applying ``body`` to ``current``, and (reseed?, seed). Validates
    everything before anything changes; raises FaultsError naming the first bad field."""
    if not isinstance(body, dict):
        raise FaultsError(None, f"the body must be a JSON object with any of {', '.join(FAULT_KEYS)}")
    for k in body:
        if k not in FAULT_KEYS:
            raise FaultsError(k, f"unknown key {k!r} (expected {', '.join(FAULT_KEYS)})")
    new = Faults(**{k: getattr(current, k) for k in ("throttle", "overload", "ttft_ms", "tokens_per_s")})
    if "throttle" in body:
        t = body["throttle"]
        if t is None:
            new.throttle = None
        else:
            t = _object(t, "throttle", ("fraction", "retry_after_s"), ("fraction",))
            new.throttle = Throttle(fraction=float(_number(t["fraction"], "throttle.fraction", 0, 1)),
                                    retry_after_s=_number(t.get("retry_after_s", 1), "throttle.retry_after_s",
                                                          0, MAX_RETRY_AFTER_S))
    if "overload" in body:
        o = body["overload"]
        if o is None:
            new.overload = None
        else:
            o = _object(o, "overload", ("fraction", "status"), ("fraction",))
            status = o.get("status", 529)
            if isinstance(status, bool) or status not in OVERLOAD_STATUSES:
                raise FaultsError("overload.status",
                                  f"overload.status must be one of {', '.join(map(str, OVERLOAD_STATUSES))}, "
                                  f"not {json.dumps(status)}")
            new.overload = Overload(fraction=float(_number(o["fraction"], "overload.fraction", 0, 1)),
                                    status=int(status))
    if "ttft_ms" in body:
        v = body["ttft_ms"]
        new.ttft_ms = None if v is None else int(_number(v, "ttft_ms", 0, MAX_TTFT_MS, integer=True))
    if "tokens_per_s" in body:
        v = body["tokens_per_s"]
        new.tokens_per_s = None if v is None else float(_number(v, "tokens_per_s", 0, MAX_TOKENS_PER_S,
                                                                 lo_open=True))
    reseed: tuple[bool, int | None] = (False, None)
    if "seed" in body:
        v = body["seed"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise FaultsError("seed", f"seed must be an integer or null, not {json.dumps(v)}")
        reseed = (True, v)
    return new, reseed


# -- the server


@dataclass
class Settings:
    """The healthy provider, from the command line."""

    ttft_ms: int = 150
    tokens_per_s: float = 200.0
    tokens: int = 24
    seed: int | None = None
    rpm_limit: int = 10_000
    models: tuple[str, ...] = MODELS


@dataclass
class Stats:
    requests: int = 0
    by_status: collections.Counter = field(default_factory=collections.Counter)
    by_retry_count: collections.Counter = field(default_factory=collections.Counter)
    streamed: int = 0
    aborted: int = 0  # streams the client closed before the end
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))

    def to_json(self) -> dict:
        return {"requests": self.requests, "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "by_retry_count": dict(sorted(self.by_retry_count.items())), "streamed": self.streamed,
                "aborted": self.aborted, "recent": list(self.recent)}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s}s"


def _seconds_header(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def prompt_tokens(messages: list) -> int:
    """An estimate (four characters a token, three tokens of framing a message), as usage
    needs a number and the lab has no tokenizer."""
    n = 3
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        n += 3 + max(1, math.ceil(len(content or "") / 4))
    return n


class Provider:
    """The aiohttp application and its state (one per process)."""

    def __init__(self, settings: Settings, control_token: str):
        self.settings = settings
        self.control_token = control_token
        self.faults = Faults()
        self.stats = Stats()
        self.rng = random.Random(settings.seed)
        self._window = (0, 0)  # (minute, requests in it) for the x-ratelimit-* headers

    # helpers

    def _ratelimit_headers(self, throttled: Throttle | None = None) -> dict[str, str]:
        now = time.time()
        minute = int(now // 60)
        count = self._window[1] + 1 if self._window[0] == minute else 1
        self._window = (minute, count)
        limit = self.settings.rpm_limit
        if throttled is not None:
            return {"x-ratelimit-limit-requests": str(limit), "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": _duration(throttled.retry_after_s)}
        return {"x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": str(max(0, limit - count)),
                "x-ratelimit-reset-requests": _duration((minute + 1) * 60 - now)}

    def _record(self, status: int, retry: str | None, stream: bool) -> None:
        s = self.stats
        s.requests += 1
        s.by_status[status] += 1
        s.by_retry_count[retry if retry is not None else "none"] += 1
        s.recent.append({"t": time.time(), "status": status, "retry_count": retry, "stream": stream})

    def _authorized_control(self, request: web.Request) -> bool:
        got = request.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {self.control_token}".encode())

    # handlers

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        request_id = "req_" + secrets.token_hex(12)
        base = {"x-request-id": request_id}
        retry = request.headers.get("x-stainless-retry-count")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            self._record(401, retry, False)
            return web.json_response(error_body("You didn't provide an API key: send it as a bearer token.",
                                                "invalid_request_error", "invalid_api_key"), status=401, headers=base)
        try:
            body = await request.json()
        except ValueError as e:
            self._record(400, retry, False)
            return web.json_response(error_body(f"The request body is not valid JSON: {e}",
                                                "invalid_request_error"), status=400, headers=base)
        problem = _check_chat_body(body)
        stream = isinstance(body, dict) and body.get("stream") is True
        if problem is not None:
            self._record(400, retry, stream)
            param, message = problem
            return web.json_response(error_body(message, "invalid_request_error", None, param),
                                     status=400, headers=base)

        # Two draws per request whatever the faults: a seed gives the same verdicts either way.
        u_throttle, u_overload = self.rng.random(), self.rng.random()
        faults = self.faults
        if faults.throttle is not None and u_throttle < faults.throttle.fraction:
            t = faults.throttle
            self._record(429, retry, stream)
            headers = {**base, **self._ratelimit_headers(t), "retry-after": _seconds_header(t.retry_after_s)}
            return web.json_response(error_body(
                f"Rate limit reached for {body['model']} on requests per min (RPM): Limit "
                f"{self.settings.rpm_limit}. Please try again in {_seconds_header(t.retry_after_s)}s.",
                "requests", "rate_limit_exceeded"), status=429, headers=headers)
        if faults.overload is not None and u_overload < faults.overload.fraction:
            o = faults.overload
            self._record(o.status, retry, stream)
            return web.json_response(error_body("The server is overloaded. Please try again later.",
                                                "server_error", "overloaded"),
                                     status=o.status, headers={**base, **self._ratelimit_headers()})

        ttft_s = (faults.ttft_ms if faults.ttft_ms is not None else self.settings.ttft_ms) / 1000.0
        rate = faults.tokens_per_s if faults.tokens_per_s is not None else self.settings.tokens_per_s
        n = self.settings.tokens
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        finish = "stop"
        if cap is not None and cap < n:
            n, finish = cap, "length"
        usage = {"prompt_tokens": prompt_tokens(body["messages"]), "completion_tokens": n}
        usage["total_tokens"] = usage["prompt_tokens"] + n
        created, cid = int(time.time()), "chatcmpl-" + secrets.token_hex(12)
        headers = {**base, **self._ratelimit_headers(), "openai-processing-ms": str(int(ttft_s * 1000))}
        started = time.monotonic()
        self._record(200, retry, stream)
        if not stream:
            await asyncio.sleep(ttft_s + max(0, n - 1) / rate)
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": created, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(_words(n)),
                                                     "refusal": None, "annotations": []},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_llmslo_lab"},
                headers=headers)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.stats.streamed += 1
        await asyncio.sleep(ttft_s)
        resp = web.StreamResponse(status=200, headers={**headers, "Content-Type": "text/event-stream; charset=utf-8",
                                                       "Cache-Control": "no-cache"})

        def chunk(choices: list, usage_value: dict | None = None) -> bytes:
            c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body["model"],
                 "service_tier": "default", "system_fingerprint": "fp_llmslo_lab", "choices": choices}
            if include_usage:
                c["usage"] = usage_value
            return b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n"

        def delta(d: dict, finish_reason: str | None = None) -> list:
            return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}]

        try:
            await resp.prepare(request)
            words = _words(n)
            first = chunk(delta({"role": "assistant", "content": "", "refusal": None}))
            t_first = time.monotonic()
            for i, word in enumerate(words):
                if i == 0:
                    await resp.write(first + chunk(delta({"content": word})))
                    continue
                wait = t_first + i / rate - time.monotonic()  # a schedule, so delays do not add up
                if wait > 0:
                    await asyncio.sleep(wait)
                await resp.write(chunk(delta({"content": word})))
            tail = chunk(delta({}, finish))
            if include_usage:
                tail += chunk([], usage)
            await resp.write(tail + b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.stats.aborted += 1
            log.info("event=stream_aborted request_id=%s after_s=%.3f", request_id, time.monotonic() - started)
            raise
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "llmslo-lab"}
            for m in self.settings.models]})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_faults(self, request: web.Request) -> web.Response:
        if not self._authorized_control(request):
            return self._unauthorized()
        return web.json_response(self._faults_json())

    async def put_faults(self, request: web.Request) -> web.Response:
        if not self._authorized_control(request):
            return self._unauthorized()
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as e:
            return self._bad_faults(None, f"the body is not valid JSON: {e}")
        try:
            new, (reseed, seed) = parse_faults(body, self.faults)
        except FaultsError as e:
            return self._bad_faults(e.param, e.message)
        self.faults = new  # one assignment: a request sees the old or the new faults, never a mix
        if reseed:
            self.rng.seed(seed)
        log.info("event=faults_set faults=%s reseed=%s seed=%s", json.dumps(new.to_json(), separators=(",", ":")),
                 reseed, seed)
        return web.json_response(self._faults_json())

    async def get_stats(self, request: web.Request) -> web.Response:
        if not self._authorized_control(request):
            return self._unauthorized()
        return web.json_response(self.stats.to_json())

    def _faults_json(self) -> dict:
        f = self.faults
        return {"faults": f.to_json(), "effective": {
            "ttft_ms": f.ttft_ms if f.ttft_ms is not None else self.settings.ttft_ms,
            "tokens_per_s": f.tokens_per_s if f.tokens_per_s is not None else self.settings.tokens_per_s}}

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response(error_body("missing or wrong control token (Authorization: Bearer <token>)",
                                            "invalid_request_error", "invalid_control_token"),
                                 status=401, headers={"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _bad_faults(param: str | None, message: str) -> web.Response:
        return web.json_response(error_body(message + "; nothing was changed", "invalid_request_error",
                                            "invalid_faults", param), status=400)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/lab/faults", self.get_faults)
        app.router.add_put("/lab/faults", self.put_faults)
        app.router.add_get("/lab/stats", self.get_stats)
        return app


def _words(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


def _check_chat_body(body: object) -> tuple[str | None, str] | None:
    """(param, message) for a request the real API would refuse with 400, else None."""
    if not isinstance(body, dict):
        return None, "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model", "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "'messages' must be a non-empty array"
    if any(not isinstance(m, dict) or "role" not in m for m in messages):
        return "messages", "each message must be an object with a 'role'"
    if body.get("n") not in (None, 1):
        return "n", "the lab provider answers one choice only (n=1)"
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            return key, f"'{key}' must be a positive integer"
    if body.get("stream_options") is not None and body.get("stream") is not True:
        return "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    return None


async def _watch_owner(owner_pid: int) -> None:
    """SIGTERM ourselves once the owner is gone (a lab run killed with SIGKILL)."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(1.0)
        try:
            os.kill(owner_pid, 0)
            alive = os.getppid() == parent or owner_pid != parent
        except ProcessLookupError:
            alive = False
        if not alive:
            log.warning("event=owner_gone owner_pid=%d", owner_pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab.provider", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True, help="PEM certificate (see lab.tls.self_signed)")
    p.add_argument("--key", required=True)
    p.add_argument("--control-token", required=True, help="bearer token for /lab/*")
    p.add_argument("--ttft-ms", type=int, default=150, help="time to first token when healthy")
    p.add_argument("--tokens-per-s", type=float, default=200.0, help="token rate after the first when healthy")
    p.add_argument("--tokens", type=int, default=24, help="completion tokens per answer")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault draws (default: random)")
    p.add_argument("--rpm-limit", type=int, default=10_000, help="the nominal x-ratelimit-limit-requests")
    p.add_argument("--owner-pid", type=int, default=None, help="exit when this process is gone (default: parent)")
    a = p.parse_args(argv)
    for name, value, lo, hi in (("--ttft-ms", a.ttft_ms, 0, MAX_TTFT_MS), ("--tokens", a.tokens, 1, 100_000),
                                ("--tokens-per-s", a.tokens_per_s, 1e-9, MAX_TOKENS_PER_S),
                                ("--rpm-limit", a.rpm_limit, 1, 10**9)):
        if not lo <= value <= hi:
            p.error(f"{name} must be in {lo:g}..{hi:g}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings(ttft_ms=a.ttft_ms, tokens_per_s=a.tokens_per_s, tokens=a.tokens, seed=a.seed,
                        rpm_limit=a.rpm_limit)
    provider = Provider(settings, a.control_token)
    app = provider.app()
    owner = a.owner_pid or os.getppid()

    async def watch(app: web.Application):
        task = asyncio.create_task(_watch_owner(owner))
        yield
        task.cancel()

    app.cleanup_ctx.append(watch)
    log.info("event=start host=%s port=%d ttft_ms=%d tokens_per_s=%g tokens=%d seed=%s owner_pid=%d",
             a.host, a.port, a.ttft_ms, a.tokens_per_s, a.tokens, a.seed, owner)
    # A short shutdown: streams still open at SIGTERM are cut, as a dying provider would cut them.
    web.run_app(app, host=a.host, port=a.port, ssl_context=server_context(Path(a.cert), Path(a.key)),
                access_log=None, print=None, shutdown_timeout=1.0, handle_signals=True)


# -- the launcher


class ProviderControlError(RuntimeError):
    """The provider refused a control request (the message is its own)."""


class ProviderProcess:
    """``python -m lab.provider`` in a child process, with a certificate for ``hostname`` (and
    127.0.0.1) written under ``work_dir``.

    ``base_url`` names the provider by host name (resolve it through the lab's DNS server);
    ``local_base_url`` by address. ``ca_file`` is the certificate a client is told to trust."""

    def __init__(self, work_dir: Path, hostname: str = DEFAULT_HOSTNAME, *, ttft_ms: int = 150,
                 tokens_per_s: float = 200.0, tokens: int = 24, seed: int | None = None,
                 control_token: str | None = None, log_path: Path | None = None):
        self.work_dir = Path(work_dir)
        self.hostname = hostname
        self.args = ["--ttft-ms", str(ttft_ms), "--tokens-per-s", str(tokens_per_s), "--tokens", str(tokens)]
        if seed is not None:
            self.args += ["--seed", str(seed)]
        self.control_token = control_token or secrets.token_urlsafe(18)
        self.log_path = log_path or self.work_dir / "provider.log"
        self.port = 0
        self.ca_file: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._ctx: ssl.SSLContext | None = None

    @property
    def base_url(self) -> str:
        return f"https://{self.hostname}:{self.port}/v1"

    @property
    def local_base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 30.0) -> ProviderProcess:
        from common.net import free_port
        from lab.harness import REPO

        self.work_dir.mkdir(parents=True, exist_ok=True)
        cert, key = self_signed(self.work_dir / "provider-tls", [self.hostname, "127.0.0.1", "localhost"])
        self.ca_file = cert
        self._ctx = ssl.create_default_context(cafile=str(cert))
        for _ in range(3):  # the free port can be taken between the probe and the bind: try another
            self.port = free_port()
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "lab.provider", "--port", str(self.port), "--cert", str(cert),
                     "--key", str(key), f"--control-token={self.control_token}", "--owner-pid", str(os.getpid()),
                     *self.args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self._request("GET", "/health", auth=False)[0] == 200:
                        return self
                except OSError:
                    time.sleep(0.1)
            if self.proc.poll() is None:
                self.stop()
                raise TimeoutError(f"the provider did not answer in {timeout}s; see {self.log_path}")
        tail = self.log_path.read_text(errors="replace")[-2000:]
        assert self.proc is not None  # started in each attempt
        raise RuntimeError(f"the provider exited with {self.proc.returncode}:\n{tail}")

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True,
                 timeout: float = 5.0) -> tuple[int, dict]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._ctx, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = f"Bearer {self.control_token}"
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        finally:
            conn.close()

    def _control(self, method: str, path: str, body: dict | None = None) -> dict:
        status, data = self._request(method, path, body)
        if status != 200:
            raise ProviderControlError(f"{method} {path}: {status} {data.get('error', {}).get('message', data)}")
        return data

    def set_faults(self, **faults) -> dict:
        """PUT /lab/faults with the given keys only (throttle, overload, ttft_ms, tokens_per_s,
        seed), e.g. ``set_faults(throttle={"fraction": 0.3, "retry_after_s": 1})``. Returns the
        provider's state. Blocking (a loopback round trip): from async code use a thread."""
        return self._control("PUT", "/lab/faults", faults)

    def clear_faults(self) -> dict:
        return self.set_faults(throttle=None, overload=None, ttft_ms=None, tokens_per_s=None)

    def faults(self) -> dict:
        return self._control("GET", "/lab/faults")

    def stats(self) -> dict:
        return self._control("GET", "/lab/stats")

    def stop(self) -> None:
        process.stop(self.proc)

    def __enter__(self) -> ProviderProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def sweep_stale() -> list[int]:
    """SIGKILL lab providers whose owner process is gone (normally they exit on their own
    within a second). Returns their pids."""
    killed = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lab.provider" not in argv or b"--owner-pid" not in argv:
            continue
        try:
            owner = int(argv[argv.index(b"--owner-pid") + 1])
        except (IndexError, ValueError):
            continue
        if not Path(f"/proc/{owner}").exists():
            try:
                os.kill(int(d.name), signal.SIGKILL)
                killed.append(int(d.name))
            except ProcessLookupError:
                pass
    return killed


if __name__ == "__main__":
    main()
