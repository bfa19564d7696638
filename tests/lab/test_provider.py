"""The lab's provider stand-in, driven by the official ``openai`` SDK over real TLS.

One provider process serves the module (healthy: 60 ms to the first token, 400 tokens/s, 24
tokens, seed 7); each test sets the faults it needs through ``PUT /lab/faults`` and they are
cleared after it. The SDK trusts the provider's self-signed certificate through its IP SAN
(``https://127.0.0.1:PORT/v1``); tests/lab/test_dns.py reaches it by host name through the lab
DNS server. Server-side counts (``GET /lab/stats``, including the SDK's own
``x-stainless-retry-count`` header) are the ground truth for attempts and retries.

Timing assertions: lower bounds are exact (the provider sleeps before it writes the first byte,
so nothing can arrive earlier); upper bounds allow 400 ms for a loaded 2-CPU machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import openai
import pytest

from lab.harness import REPO
from lab.provider import ProviderProcess, sweep_stale

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "system", "content": "Answer from the passages."},
            {"role": "user", "content": "What does the lab provider say?"}]
TTFT_S, RATE, TOKENS = 0.060, 400.0, 24
SLACK_S = 0.4  # upper-bound tolerance for a loaded machine


@pytest.fixture(scope="module")
def provider():
    work = Path(tempfile.mkdtemp(prefix="llmslo-lab-test-provider-"))
    p = ProviderProcess(work, ttft_ms=int(TTFT_S * 1000), tokens_per_s=RATE, tokens=TOKENS, seed=7)
    try:
        yield p.start()
    finally:
        p.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert p.proc.poll() is not None


@pytest.fixture(autouse=True)
def healthy_after(provider):
    yield
    provider.clear_faults()


@contextlib.asynccontextmanager
async def sdk(provider: ProviderProcess, max_retries: int = 0):
    http = httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(provider.ca_file)))
    client = openai.AsyncOpenAI(base_url=provider.local_base_url, api_key="lab-key", http_client=http,
                                max_retries=max_retries)
    try:
        yield client
    finally:
        await client.close()
        await http.aclose()


def delta(before: dict, after: dict) -> tuple[dict, dict, list]:
    """Requests the provider saw between two stats snapshots: by status, by retry count, and
    the new entries of its recent-request log."""
    by_status = {k: v - before["by_status"].get(k, 0) for k, v in after["by_status"].items()
                 if v - before["by_status"].get(k, 0)}
    by_retry = {k: v - before["by_retry_count"].get(k, 0) for k, v in after["by_retry_count"].items()
                if v - before["by_retry_count"].get(k, 0)}
    return by_status, by_retry, after["recent"][len(before["recent"]):] if len(after["recent"]) < 1000 else []


async def stream_timed(client: openai.AsyncOpenAI, **kw) -> dict:
    """One streamed completion: seconds to the response headers (create() returns), to the
    first and last content chunk, and the chunks."""
    t0 = time.monotonic()
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **kw)
    out = {"headers_s": time.monotonic() - t0, "chunks": [], "content_times": []}
    async for chunk in stream:
        out["chunks"].append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            out["content_times"].append(time.monotonic() - t0)
    out["first_s"], out["last_s"] = out["content_times"][0], out["content_times"][-1]
    return out


@pytest.mark.slow
async def test_streaming_chunks_carry_content_and_usage(provider):
    """Streaming as the SDK parses it: ``chat.completion.chunk`` objects, a first delta with
    the role, one chunk per token, a finish chunk, and with ``include_usage`` a last chunk with
    empty choices and the usage (every other chunk's usage null). Without ``include_usage``
    there is no usage chunk. The text equals the non-streamed answer's."""
    async with sdk(provider) as client:
        with_usage = (await stream_timed(client, stream_options={"include_usage": True}))["chunks"]
        without = (await stream_timed(client))["chunks"]
        full = await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert {c.object for c in with_usage} == {"chat.completion.chunk"}
    assert len({c.id for c in with_usage}) == 1 and with_usage[0].id.startswith("chatcmpl-")
    assert {c.model for c in with_usage} == {MODEL}
    first, *middle, finish, usage_chunk = with_usage
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    content = [c.choices[0].delta.content for c in middle]
    assert len(content) == TOKENS and all(content)
    assert all(c.choices[0].finish_reason is None for c in [first, *middle])
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert usage_chunk.choices == []
    u = usage_chunk.usage
    assert u.completion_tokens == TOKENS and u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + TOKENS
    assert all(c.usage is None for c in with_usage[:-1])

    assert all(c.choices for c in without), "no usage chunk without stream_options.include_usage"
    assert without[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in without)
    assert "".join(c.choices[0].delta.content or "" for c in without) == "".join(content)

    assert full.object == "chat.completion" and full.model == MODEL
    assert full.choices[0].message.role == "assistant" and full.choices[0].finish_reason == "stop"
    assert full.choices[0].message.content == "".join(content)
    assert full.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
        u.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})


@pytest.mark.slow
async def test_non_streaming_headers_limits_and_bad_requests(provider):
    """A non-streamed answer with the rate-limit headers the SDK exposes, ``max_tokens``
    honoured with ``finish_reason="length"``, the model list, and a request the API refuses
    (no messages) raised by the SDK as BadRequestError naming the parameter."""
    async with sdk(provider) as client:
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=5)
        completion = raw.parse()
        models = [m.id async for m in client.models.list()]
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model=MODEL, messages=[])

    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "10000"
    assert 0 <= int(h["x-ratelimit-remaining-requests"]) < 10000
    assert re.fullmatch(r"\d+ms|\d+(\.\d+)?s", h["x-ratelimit-reset-requests"]), h["x-ratelimit-reset-requests"]
    assert h["x-request-id"].startswith("req_") and completion._request_id == h["x-request-id"]
    assert "retry-after" not in h and raw.retries_taken == 0
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 5
    assert len(completion.choices[0].message.content.split()) <= 5
    assert MODEL in models
    assert bad.value.status_code == 400 and bad.value.param == "messages"
    assert bad.value.type == "invalid_request_error"


async def test_throttle_without_retries_raises_rate_limit_error_with_headers(provider):
    """throttle fraction 1, max_retries=0: one attempt, and the SDK raises RateLimitError whose
    response carries ``retry-after`` and the ``x-ratelimit-*`` headers, and whose error body
    has OpenAI's type and code. A streamed request is refused the same way before any chunk."""
    provider.set_faults(throttle={"fraction": 1.0, "retry_after_s": 2})
    before = provider.stats()
    async with sdk(provider, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as plain:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    e = plain.value
    h = e.response.headers
    assert e.status_code == 429
    assert h["retry-after"] == "2"
    assert h["x-ratelimit-limit-requests"] == "10000" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == "2s"
    assert e.code == "rate_limit_exceeded" and e.type == "requests" and "Rate limit" in e.body["message"]
    by_status, by_retry, _ = delta(before, provider.stats())
    assert by_status == {"429": 2} and by_retry == {"0": 2}


@pytest.mark.slow
async def test_throttle_with_retries_is_retried_after_retry_after(provider):
    """max_retries=2 against a provider that always throttles with ``retry-after: 1``: the
    provider sees exactly three attempts, the SDK numbering them 0, 1, 2, each at least 1.0 s
    after the previous one (the SDK's own backoff would wait at most 0.5 s before the first
    retry: the gap proves it read ``retry-after``), then the SDK raises RateLimitError.

    Then half the requests throttled (``retry-after: 0.2``, seed 11): every 429 the provider
    sent was retried away or ended in RateLimitError after three attempts; the counts agree
    exactly with the retries the SDK reports (``retries_taken``)."""
    provider.set_faults(throttle={"fraction": 1.0, "retry_after_s": 1})
    before = provider.stats()
    async with sdk(provider, max_retries=2) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    by_status, by_retry, recent = delta(before, provider.stats())
    assert by_status == {"429": 3} and by_retry == {"0": 1, "1": 1, "2": 1}
    assert [r["retry_count"] for r in recent] == ["0", "1", "2"]
    gaps = [b["t"] - a["t"] for a, b in zip(recent, recent[1:])]
    assert all(1.0 <= g <= 1.0 + SLACK_S for g in gaps), gaps

    provider.set_faults(throttle={"fraction": 0.5, "retry_after_s": 0.2}, seed=11)
    before = provider.stats()
    retries, successes, failures = 0, 0, 0
    async with sdk(provider, max_retries=2) as client:
        for _ in range(8):
            try:
                raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES,
                                                                             max_tokens=1)
                raw.parse()
                retries += raw.retries_taken
                successes += 1
            except openai.RateLimitError as e:
                assert e.response.headers["retry-after"] == "0.2"
                failures += 1
    by_status, by_retry, _ = delta(before, provider.stats())
    print(f"8 requests at 50% throttling: {successes} succeeded after {retries} retries, {failures} failed")
    assert retries >= 1, "seed 11 throttles some first attempts"
    assert by_status.get("200", 0) == successes
    assert by_status.get("429", 0) == retries + 3 * failures
    assert sum(by_retry.values()) == successes + retries + 3 * failures
    assert by_retry.get("0", 0) == 8


async def test_overload_answers_529_or_503(provider):
    """Overload at fraction 1 answers the configured status with an OpenAI-style error body:
    529 raised by the SDK as InternalServerError (max_retries=0: one attempt); 503 retried by
    the SDK (max_retries=1: two attempts, then the error)."""
    provider.set_faults(overload={"fraction": 1.0, "status": 529})
    before = provider.stats()
    async with sdk(provider, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as e529:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert e529.value.status_code == 529
    assert e529.value.body == {"message": "The server is overloaded. Please try again later.",
                               "type": "server_error", "param": None, "code": "overloaded"}
    assert delta(before, provider.stats())[0] == {"529": 1}

    provider.set_faults(overload={"fraction": 1.0, "status": 503})
    before = provider.stats()
    async with sdk(provider, max_retries=1) as client:
        with pytest.raises(openai.InternalServerError) as e503:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert e503.value.status_code == 503 and e503.value.code == "overloaded"
    by_status, by_retry, _ = delta(before, provider.stats())
    assert by_status == {"503": 2} and by_retry == {"0": 1, "1": 1}


@pytest.mark.slow
async def test_time_to_first_token_and_token_rate_change_at_runtime(provider):
    """The first content chunk (and the response headers: the first byte) arrive no earlier
    than the time to first token, healthy (60 ms) and after ``ttft_ms`` 700; ``tokens_per_s``
    50 spreads the 24 tokens over at least 23/50 s (less 50 ms: the first chunk may be read
    late, which shortens the measured span); clearing restores the healthy provider."""
    async with sdk(provider) as client:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)  # TLS handshake
        healthy = await stream_timed(client)
        slow_state = provider.set_faults(ttft_ms=700)
        slow = await stream_timed(client)
        provider.set_faults(ttft_ms=None, tokens_per_s=50)
        paced = await stream_timed(client)
        provider.clear_faults()
        back = await stream_timed(client)
    print(f"first chunk after (s): healthy {healthy['first_s']:.3f}, ttft_ms=700 {slow['first_s']:.3f}, "
          f"restored {back['first_s']:.3f}; 24 tokens at 50/s over {paced['last_s'] - paced['first_s']:.3f} s")
    assert slow_state["effective"] == {"ttft_ms": 700, "tokens_per_s": RATE}
    assert TTFT_S <= healthy["headers_s"] <= healthy["first_s"] <= TTFT_S + SLACK_S
    assert 0.700 <= slow["headers_s"] <= slow["first_s"] <= 0.700 + SLACK_S
    assert TTFT_S <= back["first_s"] <= TTFT_S + SLACK_S
    assert healthy["last_s"] - healthy["first_s"] <= 23 / RATE + SLACK_S
    span = paced["last_s"] - paced["first_s"]
    assert 23 / 50 - 0.05 <= span <= 23 / 50 + SLACK_S, span
    assert len(paced["content_times"]) == TOKENS


async def test_control_endpoint_needs_the_token_and_refuses_bad_bodies(provider):
    """``PUT /lab/faults``: 401 without or with a wrong token; 400 with a message naming the
    field for bad JSON, a non-object, unknown keys, missing or out-of-range values and wrong
    types; after every refusal the faults are exactly as before (also when a valid key came
    with the bad one)."""
    known = provider.set_faults(ttft_ms=80, throttle={"fraction": 0.25, "retry_after_s": 3})
    url = f"https://127.0.0.1:{provider.port}/lab/faults"
    good = {"Authorization": f"Bearer {provider.control_token}"}
    async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(provider.ca_file))) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": provider.control_token}):
            r = await http.put(url, headers=headers, json={"ttft_ms": 1})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "invalid_control_token"
        for path in ("/lab/faults", "/lab/stats"):
            assert (await http.get(f"https://127.0.0.1:{provider.port}{path}")).status_code == 401

        cases = [
            (b"{not json", None, "not valid JSON"),
            (b"[1, 2]", None, "must be a JSON object"),
            ({"latency": 5}, "latency", "unknown key 'latency'"),
            ({"throttle": 0.5}, "throttle", "must be an object or null"),
            ({"throttle": {"retry_after_s": 1}}, "throttle.fraction", "throttle.fraction is required"),
            ({"throttle": {"fraction": 1.5}}, "throttle.fraction", "at most 1"),
            ({"throttle": {"fraction": 0.5, "burst": 2}}, "throttle.burst", "unknown key throttle.burst"),
            ({"throttle": {"fraction": 0.5, "retry_after_s": -1}}, "throttle.retry_after_s", "at least 0"),
            ({"overload": {"fraction": 0.5, "status": 500}}, "overload.status", "one of 529, 503"),
            ({"ttft_ms": -1}, "ttft_ms", "at least 0"),
            ({"ttft_ms": 1.5}, "ttft_ms", "must be an integer"),
            ({"ttft_ms": True}, "ttft_ms", "must be an integer"),
            ({"ttft_ms": 10**9}, "ttft_ms", "at most 120000"),
            ({"tokens_per_s": 0}, "tokens_per_s", "greater than 0"),
            ({"seed": "seven"}, "seed", "must be an integer or null"),
            ({"ttft_ms": 10, "overload": {"fraction": 2}}, "overload.fraction", "at most 1"),
        ]
        for body, param, text in cases:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = await http.put(url, headers=good, content=content)
            assert r.status_code == 400, (body, r.text)
            err = r.json()["error"]
            assert text in err["message"] and "nothing was changed" in err["message"], (body, err)
            assert err["param"] == param and err["type"] == "invalid_request_error", (body, err)
            assert (await http.get(url, headers=good)).json() == known, body
    assert known["faults"] == {"throttle": {"fraction": 0.25, "retry_after_s": 3}, "overload": None,
                               "ttft_ms": 80, "tokens_per_s": None}


@pytest.mark.slow
async def test_seed_fixes_the_sequence_of_fault_verdicts(provider):
    """Throttle 30% and overload 20% (529): 30 requests after reseeding with 7 get a mix of
    200, 429 and 529; the same 30 after reseeding with 7 again get the same sequence."""
    provider.set_faults(throttle={"fraction": 0.3, "retry_after_s": 1}, overload={"fraction": 0.2, "status": 529})

    async def run() -> list[int]:
        provider.set_faults(seed=7)
        statuses = []
        async with sdk(provider, max_retries=0) as client:
            for _ in range(30):
                try:
                    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
                    statuses.append(200)
                except openai.APIStatusError as e:
                    statuses.append(e.status_code)
        return statuses

    first, second = await run(), await run()
    print("verdicts:", "".join({200: ".", 429: "T", 529: "O"}[s] for s in first))
    assert first == second
    assert {200, 429, 529} == set(first)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


OWNER = r"""
import sys, time
from pathlib import Path
from lab.provider import ProviderProcess
p = ProviderProcess(Path(sys.argv[1])).start()
print(p.proc.pid, p.port, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_certificate_names_and_cleanup(provider):
    """The certificate is valid for api.provider.lab and 127.0.0.1 and nothing else; stop()
    ends the process and frees the port; a provider whose owner is SIGKILLed exits by itself
    within a few seconds, and sweep_stale() then finds nothing to kill."""
    ctx = ssl.create_default_context(cafile=str(provider.ca_file))
    for name in ("api.provider.lab", "127.0.0.1"):
        with socket.create_connection(("127.0.0.1", provider.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection(("127.0.0.1", provider.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="other.provider.lab")

    work = Path(tempfile.mkdtemp(prefix="llmslo-lab-test-owner-"))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(work)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child_pid = None
    try:
        child_pid, port = map(int, owner.stdout.readline().split())
        second = ProviderProcess(work / "second").start()
        assert not _gone(second.pid)
        second.stop()
        assert _gone(second.pid)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", second.port), timeout=2).close()

        assert not _gone(child_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _gone(child_pid):
            time.sleep(0.1)
        print(f"orphaned provider gone {10 - (deadline - time.monotonic()):.1f} s after its owner was killed")
        assert _gone(child_pid)
        assert sweep_stale() == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if child_pid is not None and not _gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

