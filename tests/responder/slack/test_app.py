"""The Slack app in the responder: signed slash commands, buttons and @mentions over a real
socket, answers within Slack's 3 s, results in the right thread; Socket Mode against the
stand-in's WebSocket. The capture agent is a closed port, so captures fail at once and each
incident abstains naming that failure: no eBPF needed to exercise the chat side."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.parse

import pytest

from tests.responder.test_server import BEARER, WEBHOOK, assert_nothing_stored, make_settings, payload, poll, start
from tests.standins.slack import APP_TOKEN, DEFAULT_TOKEN, SIGNING_SECRET, SlackStandin, signed_headers

CHANNEL = "C0LLMSLO"


@pytest.fixture
def slack(standin):
    return standin


@pytest.fixture
async def svc(tmp_path, slack):
    s = await start(make_settings(tmp_path, slack_bot_token=DEFAULT_TOKEN, slack_signing_secret=SIGNING_SECRET,
                                  slack_api_url=slack.base_url, slack_channel="#llm-incidents"))
    yield s
    await s.client.close()


def command_body(slack: SlackStandin, text: str, user: str = "U0ALICE", channel: str = CHANNEL) -> bytes:
    return urllib.parse.urlencode({
        "token": "deprecated", "team_id": "T0LLMSLO", "channel_id": channel, "channel_name": "llm-incidents",
        "user_id": user, "user_name": "alice", "command": "/llmslo", "text": text, "api_app_id": "A0LLMSLO",
        "response_url": slack.response_url("cmd"), "trigger_id": "1.2.3"}).encode()


def action_body(slack: SlackStandin, action_id: str, value: str, user: str = "U0BOB") -> bytes:
    data = {"type": "block_actions", "team": {"id": "T0LLMSLO"}, "user": {"id": user, "name": "bob"},
            "api_app_id": "A0LLMSLO", "token": "deprecated", "trigger_id": "1.2.4",
            "channel": {"id": CHANNEL}, "container": {"type": "message", "channel_id": CHANNEL},
            "response_url": slack.response_url("button"),
            "actions": [{"type": "button", "action_id": action_id, "block_id": "llmslo_incident_actions",
                         "value": value, "action_ts": str(time.time())}]}
    return urllib.parse.urlencode({"payload": json.dumps(data)}).encode()


def mention_body(text: str, thread_ts: str | None, user: str = "U0CAROL") -> bytes:
    event = {"type": "app_mention", "user": user, "text": text, "ts": f"{time.time():.6f}", "channel": CHANNEL,
             "event_ts": f"{time.time():.6f}"}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return json.dumps({"token": "deprecated", "team_id": "T0LLMSLO", "api_app_id": "A0LLMSLO", "event": event,
                       "type": "event_callback", "event_id": f"Ev{time.time_ns()}", "event_time": int(time.time()),
                       "authorizations": [{"team_id": "T0LLMSLO", "user_id": "U0LLMSLOBOT", "is_bot": True}]}
                      ).encode()


async def post_signed(svc, body: bytes, content_type: str = "application/x-www-form-urlencoded", **sign):
    t0 = time.monotonic()
    resp = await svc.client.post("/slack/events", data=body,
                                 headers={"Content-Type": content_type, **signed_headers(body, **sign)})
    text = await resp.text()
    return resp.status, text, time.monotonic() - t0


async def incident_thread(svc, slack: SlackStandin, incident_id: str, replies: int = 1):
    """(incident, its Slack thread) once the thread has at least ``replies`` replies."""
    async def ready():
        inc = svc.responder.store.get_incident(incident_id)
        ref = (inc.thread or {}).get("slack") if inc else None
        thread = slack.threads().get(ref["ts"]) if ref else None
        return (inc, thread) if thread and len(thread["replies"]) >= replies else None
    return await poll(ready, timeout=30)


async def alert_incident(svc, slack: SlackStandin, labels: dict | None = None) -> tuple:
    resp = await svc.client.post(WEBHOOK, headers=BEARER, json=payload(labels=labels, starts_at=time.time() - 30))
    assert resp.status == 200
    return await incident_thread(svc, slack, (await resp.json())["incident_id"])


# --- signatures -------------------------------------------------------------------------------

@pytest.mark.parametrize("tamper", ["unsigned", "stale", "wrong secret", "body changed"])
@pytest.mark.slow
async def test_requests_not_signed_by_slack_get_401_and_run_nothing(svc, slack, tamper):
    body = command_body(slack, "capture pid:4242 2s")
    headers = signed_headers(body, timestamp=time.time() - 301 if tamper == "stale" else None,
                             secret="not-the-secret" if tamper == "wrong secret" else SIGNING_SECRET)
    if tamper == "unsigned":
        headers = {}
    if tamper == "body changed":
        body = body.replace(b"pid%3A4242", b"pid%3A4243")
    resp = await svc.client.post("/slack/events", data=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
    assert resp.status == 401
    await asyncio.sleep(0.3)
    assert_nothing_stored(svc)
    assert slack.calls_to("chat.postMessage") == [] and slack.responses == []


async def test_slack_events_without_slack_configured_is_404(tmp_path):
    s = await start(make_settings(tmp_path))
    try:
        body = b"command=%2Fllmslo&text=help"
        resp = await s.client.post("/slack/events", data=body, headers=signed_headers(body))
        assert resp.status == 404 and "LLMSLO_SLACK_SIGNING_SECRET" in (await resp.json())["error"]
    finally:
        await s.client.close()


# --- the slash command ------------------------------------------------------------------------

@pytest.mark.slow
async def test_slash_command_capture_is_stored_acked_fast_and_answered_in_a_new_thread(svc, slack):
    status, text, seconds = await post_signed(svc, command_body(slack, "capture pid:4242 2s tcp_retrans,dns"))
    assert status == 200 and seconds < 3.0
    ack = json.loads(text)
    assert ack["response_type"] == "ephemeral" and "new thread in this channel" in ack["text"]
    incident_id = ack["text"].split("incident `")[1].split("`")[0]
    inc = svc.responder.store.get_incident(incident_id)
    assert inc is not None and inc.source == "adhoc"  # stored before the ack said so
    alert = inc.alerts[0]
    assert alert["labels"]["pid"] == "4242" and alert["labels"]["slack_channel"] == CHANNEL
    assert alert["annotations"]["llmslo_duration_s"] == "2" and alert["annotations"]["llmslo_probes"] == "tcp_retrans,dns"
    assert alert["annotations"]["llmslo_requested_by"] == "U0ALICE"
    inc, thread = await incident_thread(svc, slack, incident_id)
    assert thread["root"]["channel"] == CHANNEL and incident_id in thread["root"]["text"]
    assert "capture failed" in json.dumps(thread["replies"])  # the closed agent port, said in the thread


@pytest.mark.parametrize("text, says", [
    ("capture ../etc/passwd", "is not a target"),
    ("capture pid:7 500s", "outside 1–120s"),
    ("capture pid:7 bogus_probe", "Unknown probe"),
    ("deploy everything", "Unknown command"),
])
@pytest.mark.slow
async def test_bad_commands_are_answered_with_usage_and_store_nothing(svc, slack, text, says):
    status, body, _ = await post_signed(svc, command_body(slack, text))
    assert status == 200
    assert says in json.loads(body)["text"]
    await asyncio.sleep(0.2)
    assert_nothing_stored(svc)


@pytest.mark.slow
async def test_help_and_status(svc, slack):
    status, body, _ = await post_signed(svc, command_body(slack, "help"))
    assert status == 200 and "/llmslo capture" in json.loads(body)["text"]
    status, body, _ = await post_signed(svc, command_body(slack, "status"))
    assert json.loads(body)["text"] == "No incident is open."
    inc, _ = await alert_incident(svc, slack)
    for text in ("status", f"status {inc.id}"):
        status, body, _ = await post_signed(svc, command_body(slack, text))
        assert inc.id in json.loads(body)["text"] and "firing" in json.loads(body)["text"]
    status, body, _ = await post_signed(svc, command_body(slack, "status inc-0000000000"))
    assert json.loads(body)["text"] == "No incident `inc-0000000000`."


# --- buttons and mentions in an incident's thread ---------------------------------------------

@pytest.mark.slow
async def test_root_carries_buttons_and_capture_again_answers_in_the_same_thread(svc, slack):
    inc, thread = await alert_incident(svc, slack)
    buttons = [b for block in thread["root"]["blocks"] if block["type"] == "actions" for b in block["elements"]]
    assert [b["action_id"] for b in buttons] == ["llmslo_capture_again", "llmslo_deep_capture", "llmslo_acknowledge"]
    assert all(b["value"] == inc.id for b in buttons)
    roots = len(slack.threads())
    status, _, seconds = await post_signed(svc, action_body(slack, "llmslo_capture_again", inc.id))
    assert status == 200 and seconds < 3.0
    follow = await poll(lambda: _adhoc_incidents(svc))
    opts = follow[0].alerts[0]
    assert json.loads(opts["annotations"]["llmslo_reply_to"])["ts"] == thread["root"]["ts"]
    assert opts["labels"]["pid"] == "1" and opts["labels"]["llmslo_playbook"] == inc.playbook
    _, thread = await incident_thread(svc, slack, inc.id, replies=3)  # + "capture by", + its attribution
    texts = [r["text"] for r in thread["replies"]]
    assert any("Capture by U0BOB" in t and follow[0].id in t for t in texts)
    assert len(slack.threads()) == roots  # no new thread: the answer is in this one
    assert slack.threads()[thread["root"]["ts"]]["root"]["text"] == thread["root"]["text"]


@pytest.mark.slow
async def test_deep_capture_asks_for_sixty_seconds(svc, slack):
    inc, _ = await alert_incident(svc, slack)
    status, _, _ = await post_signed(svc, action_body(slack, "llmslo_deep_capture", inc.id))
    assert status == 200
    follow = await poll(lambda: _adhoc_incidents(svc))
    assert follow[0].alerts[0]["annotations"]["llmslo_duration_s"] == "60"


@pytest.mark.slow
async def test_acknowledge_updates_the_root_once(svc, slack):
    inc, thread = await alert_incident(svc, slack)
    for _ in range(2):
        status, _, _ = await post_signed(svc, action_body(slack, "llmslo_acknowledge", inc.id, user="U0DAVE"))
        assert status == 200

    async def acked():
        root = slack.threads()[thread["root"]["ts"]]["root"]
        return root if "acknowledged by" in json.dumps(root["blocks"]) else None
    root = await poll(acked)
    assert "<@U0DAVE>" in json.dumps(root["blocks"])
    assert "llmslo_acknowledge" not in json.dumps(root["blocks"])  # the button is gone
    assert svc.responder.store.get_incident(inc.id).acknowledged["by"] == "U0DAVE"
    await asyncio.sleep(0.5)
    updates = [c for c in slack.calls_to("chat.update") if "acknowledged" in json.dumps(c["body"])]
    assert len(updates) == 1


async def test_buttons_for_unknown_incidents_say_so_and_store_nothing(svc, slack):
    for value in ("inc-0123456789", "'; DROP TABLE incidents; --"):
        status, _, _ = await post_signed(svc, action_body(slack, "llmslo_capture_again", value))
        assert status == 200
    async def answered():
        return len(slack.responses) == 2
    await poll(answered)
    assert all("not known" in r["text"] for r in slack.responses)
    assert_nothing_stored(svc)


@pytest.mark.slow
async def test_mention_in_a_thread_captures_for_that_incident(svc, slack):
    inc, thread = await alert_incident(svc, slack)
    status, _, _ = await post_signed(svc, mention_body("<@U0LLMSLOBOT> capture 2s", thread["root"]["ts"]),
                                     content_type="application/json")
    assert status == 200
    follow = await poll(lambda: _adhoc_incidents(svc))
    assert follow[0].alerts[0]["annotations"]["llmslo_requested_by"] == "U0CAROL"
    _, thread = await incident_thread(svc, slack, inc.id, replies=4)  # ack reply, capture by, attribution
    assert any("Capture by U0CAROL" in r["text"] for r in thread["replies"])
    # a mention that is not a command is answered with the usage, in the thread
    await post_signed(svc, mention_body("<@U0LLMSLOBOT> what happened?", thread["root"]["ts"]),
                      content_type="application/json")

    async def usage():
        t = slack.threads()[thread["root"]["ts"]]
        return any("Usage:" in r["text"] for r in t["replies"])
    assert await poll(usage)
    assert len(await _adhoc_incidents(svc)) == 1


# --- routing ------------------------------------------------------------------------------------

@pytest.mark.slow
async def test_a_channel_label_routes_the_thread_and_a_mention_label_pings_the_owners(tmp_path):
    slack = SlackStandin(channels={"#llm-incidents": "C0LLMSLO", "#rag-team": "C0RAGTEAM"})
    await slack.start()
    svc = await start(make_settings(tmp_path, slack_bot_token=DEFAULT_TOKEN, slack_signing_secret=SIGNING_SECRET,
                                    slack_api_url=slack.base_url, slack_channel="#llm-incidents"))
    try:
        labels = {"alertname": "LLMErrorBurn", "severity": "page", "pid": "1", "slack_channel": "#rag-team",
                  "slack_mention": "S0RAGOWNERS"}
        inc, thread = await alert_incident(svc, slack, labels)
        assert thread["root"]["channel"] == "C0RAGTEAM"
        assert thread["root"]["text"].startswith("<!subteam^S0RAGOWNERS>")
        labels.update(slack_channel="", slack_mention="<!everyone> evil", alertname="LLMLatencyBurn")
        inc2, thread2 = await alert_incident(svc, slack, labels)
        assert thread2["root"]["channel"] == "C0LLMSLO" and "evil" not in thread2["root"]["text"]
    finally:
        await svc.client.close()
        await slack.stop()


# --- Socket Mode ---------------------------------------------------------------------------------

@pytest.mark.slow
async def test_socket_mode_carries_commands_with_the_same_listeners(tmp_path, slack):
    svc = await start(make_settings(tmp_path, slack_bot_token=DEFAULT_TOKEN, slack_signing_secret=SIGNING_SECRET,
                                    slack_app_token=APP_TOKEN, slack_api_url=slack.base_url))
    try:
        await slack.wait_socket()
        ack = await slack.send_envelope("slash_commands", {
            "command": "/llmslo", "text": "capture pid:4242 2s", "user_id": "U0ERIN", "channel_id": CHANNEL,
            "team_id": "T0LLMSLO", "response_url": slack.response_url("sock"), "trigger_id": "1.2.5"})
        assert "incident `inc-" in ack["payload"]["text"]
        incident_id = ack["payload"]["text"].split("incident `")[1].split("`")[0]
        await incident_thread(svc, slack, incident_id)
    finally:
        await svc.client.close()


async def _adhoc_incidents(svc):
    return [i for i in svc.responder.store.list_incidents() if i.source == "adhoc"]


# --- a storm of alerts --------------------------------------------------------------------------

@pytest.mark.slow
async def test_a_hundred_alerts_for_one_group_make_one_thread_within_slack_rate_limits(svc, slack):
    from lab.harness import alert_payload

    group = '{}:{alertname="LLMErrorBurn"}'
    t0 = time.time() - 60

    async def send(i: int):
        labels = {"alertname": "LLMErrorBurn", "severity": "page", "pid": "1", "replica": f"r{i % 40}"}
        body = alert_payload("firing", labels, t0 + (i % 40), group_key=group)
        resp = await svc.client.post(WEBHOOK, headers=BEARER, json=body)
        assert resp.status == 200
        return await resp.json()

    answers = await asyncio.gather(*(send(i) for i in range(100)))
    incident_ids = {a["incident_id"] for a in answers}
    assert len(incident_ids) == 1
    assert sum(a["duplicates"] for a in answers) == 60  # 40 distinct alerts, each repeated
    jobs = [a["job_id"] for a in answers if a["job_id"] is not None]
    assert 1 <= len(jobs) <= 2  # one waiting investigation absorbs the rest (two if one had started)
    (incident_id,) = incident_ids

    async def settled():
        inc = svc.responder.store.get_incident(incident_id)
        return inc.verdict and not svc.responder.store.pending_messages() and svc.responder.store.pending_jobs() == 0
    await poll(settled, timeout=60)
    await asyncio.sleep(1)
    assert len(slack.threads()) == 1
    (thread,) = slack.threads().values()
    assert len(thread["replies"]) <= 2 * len(jobs) + 1
    posts = sorted(c["at"] for c in slack.calls_to("chat.postMessage"))
    # Slack allows about one message per second per channel, with short bursts
    assert max(sum(1 for t in posts if p <= t < p + 1.0) for p in posts) <= 3
    assert len(slack.calls_to("chat.update")) <= 50  # tier 3: 50+ per minute
