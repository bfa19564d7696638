"""The responder's HTTP service when its disk, its clients or its own code misbehave.

Each test stands for a finding of a hostile review: a store locked by another process, a raw
exception inside a job, hostile JSON, bytes that are not text, huge notifications, slow bodies and
headers, too many connections from one client, the open health check. In-process over real
loopback sockets (``tests.responder.test_server``'s helpers); the capture agent URL points at a
closed port, so investigations end at once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import pytest
from aiohttp import web

from common import http as http_server
from common.net import free_port
from responder.health import Health
from responder.store import sqlite as store_module
from responder.store.base import MAX_JOB_ATTEMPTS
from tests.responder.test_server import BEARER, LABELS, WEBHOOK, db_rows, make_settings, payload, poll, start
from tests.responder.test_store_hardening import LOCKER


@pytest.fixture
async def big(tmp_path):
    """A responder with the default body limit (the shared fixture's is 4 KiB)."""
    s = await start(make_settings(tmp_path, max_body_bytes=None))
    yield s
    await s.client.close()


@pytest.fixture
async def svc(tmp_path):
    s = await start(make_settings(tmp_path))
    yield s
    await s.client.close()


def stored(settings) -> dict[str, int]:
    return {t: db_rows(settings, f"SELECT COUNT(*) FROM {t}")[0][0]
            for t in ("notifications", "incidents", "alert_events", "jobs")}


async def raw_http(port: int, data: bytes, read_timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and return what was read until the server closed it,
    answered with a whole head, or ``read_timeout`` passed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    break
    except TimeoutError:
        pass
    writer.close()
    return out


# --- the store, locked by someone else --------------------------------------------------------

@pytest.mark.slow
async def test_a_locked_store_is_a_quick_503_and_unhealthy_then_both_recover(tmp_path, monkeypatch):
    """Before, the raw sqlite3 error ended both workers silently: alerts were still answered 200,
    their jobs stayed pending for ever, and /healthz said ok."""
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 1.0)
    svc = await start(make_settings(tmp_path))
    try:
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(svc.settings.store_path), "6"],
                                  stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        r = await svc.client.post(WEBHOOK, json=payload(), headers=BEARER)
        assert r.status == 503 and r.headers["Retry-After"] == "5"
        assert "cannot be written" in (await r.json())["error"]
        assert time.monotonic() - t0 < 5
        # While it lasts: refused at once, and unhealthy (the open answer says only that).
        t0 = time.monotonic()
        assert (await svc.client.post(WEBHOOK, json=payload(), headers=BEARER)).status == 503
        assert time.monotonic() - t0 < 0.5
        open_health = await svc.client.get("/healthz")
        assert open_health.status == 503 and await open_health.json() == {"status": "unhealthy"}
        detail = await (await svc.client.get("/healthz", headers=BEARER)).json()
        assert detail["store"]["writable"] is False and "store" in detail["problems"][0]
        locker.wait(timeout=30)

        async def healthy():
            return (await svc.client.get("/healthz")).status == 200
        await poll(healthy, timeout=15)
        r = await svc.client.post(WEBHOOK, json=payload(), headers=BEARER)
        assert r.status == 200
        incident_id = (await r.json())["incident_id"]

        async def attributed():
            inc = await (await svc.client.get(f"/api/incidents/{incident_id}", headers=BEARER)).json()
            return inc if inc.get("verdict") else None
        await poll(attributed, timeout=20)  # the workers lived through it
        detail = await (await svc.client.get("/healthz", headers=BEARER)).json()
        assert all(loop["restarts"] == 0 for loop in detail["loops"].values()), detail["loops"]
    finally:
        await svc.client.close()


@pytest.mark.slow
async def test_a_job_that_raises_is_retried_then_dead_and_the_worker_goes_on(svc, monkeypatch):
    monkeypatch.setattr("responder.app.job_backoff", lambda attempts: 0.0)
    real_run = svc.responder.pipeline.run

    async def run(job):
        inc = svc.responder.store.get_incident(job.incident_id)
        if inc.labels.get("service") == "poison":
            raise RuntimeError("a bug met by this incident only")
        return await real_run(job)

    svc.responder.pipeline.run = run
    r1 = await svc.client.post(WEBHOOK, json=payload(labels={**LABELS, "service": "poison"}), headers=BEARER)
    bad = (await r1.json())["job_id"]

    async def dead():
        return [j for j in svc.responder.store.dead_jobs() if j.id == bad] or None
    (job,) = await poll(dead, timeout=20)
    assert job.attempts == MAX_JOB_ATTEMPTS and "a bug met by this incident only" in job.last_error
    r2 = await svc.client.post(WEBHOOK, json=payload(labels={**LABELS, "alertname": "Other"}), headers=BEARER)
    good = (await r2.json())["incident_id"]

    async def attributed():
        return svc.responder.store.get_incident(good).verdict
    await poll(attributed, timeout=20)


def test_a_loop_that_makes_no_progress_is_reported_stuck():
    now = [0.0]
    h = Health(clock=lambda: now[0])
    h.loop("worker-0", stall_s=60)
    h.busy("worker-0", "job 7 of inc-1", limit_s=100)
    now[0] = 90.0
    assert h.problems() == []
    now[0] = 101.0
    assert h.problems() == ["worker-0: stuck, busy with job 7 of inc-1 for 101s"]
    h.busy("worker-0", None)
    now[0] = 170.0
    assert h.problems() == ["worker-0: stuck, no progress for 69s"]


# --- hostile input: a 4xx naming the field, nothing stored ------------------------------------

@pytest.mark.parametrize("where, mutate", [
    ("alerts[0].labels.alertname", lambda p: p["alerts"][0]["labels"].update(alertname="x\ud800")),
    ("groupKey", lambda p: p.update(groupKey="g\udfff")),
    ("alerts[0].fingerprint", lambda p: p["alerts"][0].update(fingerprint="\ud800")),
    ("commonLabels.service", lambda p: p["commonLabels"].update(service="a\x00b")),
])
async def test_strings_that_are_not_text_are_refused_naming_the_field(svc, where, mutate):
    """Before, a lone surrogate was accepted, blocked all chat delivery and broke the page."""
    p = json.loads(json.dumps(payload()))  # its label dicts are shared (with each other and LABELS)
    mutate(p)
    body = json.dumps(p).encode()  # ensure_ascii: the surrogate travels as a \\ud800 escape
    r = await svc.client.post(WEBHOOK, data=body, headers={**BEARER, "Content-Type": "application/json"})
    assert r.status == 400
    assert where in (await r.json())["error"]
    assert stored(svc.settings) == {"notifications": 0, "incidents": 0, "alert_events": 0, "jobs": 0}


@pytest.mark.parametrize("path, body, why", [
    (WEBHOOK, b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (WEBHOOK, b'{"version": "4", "truncatedAlerts": ' + b"9" * 5000 + b"}", "digits"),
    (WEBHOOK, b'{"version": NaN}', "NaN"),
    ("/api/captures", b'{"labels": {"pid": "7"}, "playbook": []}', "playbook"),
    ("/api/captures", b'{"labels": {"pid": "7"}, "duration_s": ' + b"9" * 400 + b"}", "duration_s"),
    ("/api/captures", b'{"labels": ' * 5_000 + b"1" + b"}" * 5_000, "nested too deeply"),
    ("/v1/traces", b"9" * 5000, "JSON"),
])
async def test_malformed_json_is_a_400_not_a_500(big, path, body, why):
    r = await big.client.post(path, data=body, headers={**BEARER, "Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert why in await r.text()
    assert stored(big.settings)["notifications"] == 0
    assert (await big.client.get("/healthz")).status == 200  # still answering


async def test_a_bearer_value_that_is_not_utf8_is_a_401(svc):
    port = svc.client.server.port
    request = (b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
               b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    answer = await raw_http(port, request)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


# --- big notifications --------------------------------------------------------------------------

def many_alerts(n: int) -> dict:
    p = payload()
    first = p["alerts"][0]
    p["alerts"] = [{**first, "labels": {**first["labels"], "replica": str(i)}, "fingerprint": f"{i:016x}"}
                   for i in range(n)]
    p["truncatedAlerts"] = 12
    return p


@pytest.mark.slow
async def test_a_10000_alert_notification_is_accepted_under_the_default_limit(big):
    """Before, the default 1 MiB limit answered 413 to a 4 MB group, and Alertmanager drops a
    notification refused with a 4xx."""
    body = json.dumps(many_alerts(10_000)).encode()
    assert len(body) > 3_000_000
    r = await big.client.post(WEBHOOK, data=body, headers={**BEARER, "Content-Type": "application/json"})
    assert r.status == 200
    answer = await r.json()
    assert answer["new_alerts"] == 10_000
    inc = big.responder.store.get_incident(answer["incident_id"])
    assert len(inc.alerts) == 10_000 and inc.truncated_alerts == 12


async def test_over_the_limit_the_413_names_both_settings(svc):
    body = json.dumps(many_alerts(50)).encode()
    r = await svc.client.post(WEBHOOK, data=body, headers={**BEARER, "Content-Type": "application/json"})
    assert r.status == 413
    error = (await r.json())["error"]
    assert "LLMSLO_MAX_BODY_BYTES" in error and "max_alerts" in error


async def test_concurrent_notifications_share_commits(svc):
    async def send(i: int) -> int:
        r = await svc.client.post(WEBHOOK, json=payload(labels={**LABELS, "alertname": f"A{i}"}), headers=BEARER)
        return r.status

    assert set(await asyncio.gather(*(send(i) for i in range(60)))) == {200}
    intake = svc.responder.intake
    assert intake.notifications == 60 and intake.batches < 60
    assert stored(svc.settings)["incidents"] == 60


# --- slow clients -------------------------------------------------------------------------------

@pytest.mark.slow
async def test_a_body_that_never_finishes_is_a_408(svc, monkeypatch):
    """Before, an unfinished body held a handler for 130 s and more."""
    monkeypatch.setattr(http_server, "BODY_TIMEOUT_S", 1.0)
    port = svc.client.server.port
    head = (f"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: {BEARER['Authorization']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
    t0 = time.monotonic()
    answer = await raw_http(port, head + b'{"version": "4"', read_timeout=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - t0 < 5
    assert stored(svc.settings)["notifications"] == 0


async def serve_hello(**limits) -> tuple[web.AppRunner, int]:
    async def hello(request):
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    port = free_port()
    runner = await http_server.serve(app, "127.0.0.1", port, handle_signals=False, **limits)
    return runner, port




@pytest.mark.slow
async def test_headers_that_never_finish_are_cut_off():
    runner, port = await serve_hello(header_timeout_s=1.0)
    try:
        t0 = time.monotonic()
        answer = await raw_http(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ", read_timeout=10)
        assert time.monotonic() - t0 < 5 and b"200" not in answer
    finally:
        await runner.cleanup()


async def test_one_client_cannot_hold_more_than_its_share_of_connections():
    runner, port = await serve_hello(max_connections_per_client=4)
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port)
        extra_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = await asyncio.wait_for(extra_reader.read(), 5)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed unanswered
        for _, w in held:
            w.close()
        extra_writer.close()
        deadline = time.monotonic() + 10  # room again once the server has seen them go
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
            except ConnectionResetError:
                answer = b""
            if answer.startswith(b"HTTP/1.1 200"):
                break
            assert time.monotonic() < deadline, "the closed connections were never given back"
            await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()


# --- leaks --------------------------------------------------------------------------------------

async def test_the_open_health_check_reveals_nothing(svc):
    body = await (await svc.client.get("/healthz")).text()
    assert body == '{"status": "ok"}'
    detailed = await (await svc.client.get("/healthz", headers=BEARER)).json()
    assert detailed["store"]["owner"] and "counts" in detailed


async def test_unsigned_slack_requests_are_refused_and_their_bodies_not_logged(tmp_path, standin, caplog):
    from tests.standins.slack import DEFAULT_TOKEN, SIGNING_SECRET, signed_headers

    svc = await start(make_settings(tmp_path, slack_bot_token=DEFAULT_TOKEN, slack_signing_secret=SIGNING_SECRET,
                                    slack_api_url=standin.base_url))
    try:
        secret_body = b"command=%2Fllmslo&text=capture+pid%3A1&token=do-not-log-me"
        caplog.set_level(logging.DEBUG)
        for headers in ({}, {"X-Slack-Request-Timestamp": "not-a-number", "X-Slack-Signature": "v0=00"},
                        {"X-Slack-Request-Timestamp": "9" * 400, "X-Slack-Signature": "v0=00"},
                        {**signed_headers(secret_body), "X-Slack-Signature": "v0=" + "0" * 64}):
            r = await svc.client.post("/slack/events", data=secret_body,
                                      headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
            assert r.status == 401, headers
        assert "do-not-log-me" not in caplog.text
        assert stored(svc.settings)["incidents"] == 0
    finally:
        await svc.client.close()
