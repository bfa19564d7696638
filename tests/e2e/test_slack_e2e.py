"""The recorded Slack run, on its own stack (so no earlier fault is in its baseline): an incident
whose thread lives from capturing to resolved, and captures started from chat."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from pathlib import Path

import aiohttp
import pytest

from lab import faults
from lab.harness import alert_payload
from tests.e2e.test_incident_e2e import SETTLE_S, thread_text
from tests.responder.test_server import poll
from tests.standins.slack import signed_headers

pytestmark = [pytest.mark.e2e, pytest.mark.kernel, pytest.mark.asyncio(loop_scope="module")]


async def test_slack_thread_lives_through_an_incident_and_chat_starts_captures(stack):
    """The recorded run: one root that moves capturing -> attributed -> resolved, a thread with the
    evidence, links, runbook and chart; a signed slash command and a signed button each start a
    capture whose result is posted; unsigned requests are refused. The whole conversation is
    kept at test-artifacts/slack-e2e.json."""
    slack = stack.slack
    labels = {"alertname": "LLMTTFTBurn", "severity": "page", "slo": "ttft", "scenario_run": "slack",
              "cgroup": stack.service.cgroup.path}
    group = '{}:{alertname="LLMTTFTBurn", scenario_run="slack"}'
    with faults.PacketLoss(stack.service.port, 20):
        t0 = time.time()
        await asyncio.sleep(SETTLE_S)
        _, body = await stack.responder.post_alert(alert_payload("firing", labels, t0, group_key=group))
        inc = await stack.responder.wait_verdict(body["incident_id"])
        root_ts = await poll(lambda: _root_ts(stack, inc["id"]), timeout=45)
        root_states = [_state(c) for c in slack.calls
                       if c["method"] in ("chat.postMessage", "chat.update") and c["body"].get("ts", c.get(
                           "response", {}).get("ts")) == root_ts]
        thread = await poll(lambda: _thread_with(slack, root_ts, lambda t: any(
            f.get("thread_ts") == root_ts for f in slack.files.values())), timeout=45)
        # Chat: a signed slash command for the service's pid, then the root's "Capture again".
        resp = await _slack_post(stack, _command(slack, f"capture pid:{stack.service.proc.pid} 3s"))
        assert resp[0] == 200 and "new thread in this channel" in resp[1], resp
        adhoc_id = resp[1].split("incident `")[1].split("`")[0]
        resp = await _slack_post(stack, _button(slack, "llmslo_capture_again", inc["id"]))
        assert resp[0] == 200, resp
        # The adhoc capture's own thread, and the follow-up's replies in this one.
        adhoc_ts = await poll(lambda: _root_ts(stack, adhoc_id), timeout=45)
        await poll(lambda: _thread_with(slack, adhoc_ts, lambda t: any(
            "Kernel capture" in r["text"] for r in t["replies"])), timeout=45)
        await poll(lambda: _thread_with(slack, root_ts, lambda t: sum(
            "Kernel capture" in r["text"] for r in t["replies"]) >= 2), timeout=60)
    _, resolved = await stack.responder.post_alert(
        alert_payload("resolved", labels, t0, ends_at=time.time(), group_key=group))
    thread = await poll(lambda: _thread_with(slack, root_ts, lambda t: any(
        "error budget burned for" in r["text"] for r in t["replies"])), timeout=45)
    for bad in ({}, {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=00"}):
        async with aiohttp.ClientSession() as s:
            async with s.post(stack.responder.url + "/slack/events", data=_command(slack, "capture pid:1"),
                              headers={"Content-Type": "application/x-www-form-urlencoded", **bad}) as r:
                assert r.status == 401
    root_states += [_state(c) for c in slack.calls if c["method"] == "chat.update" and c["body"].get("ts") == root_ts]
    states = list(dict.fromkeys(root_states))
    assert states[0] == "CAPTURING" and "ATTRIBUTED" in states and states[-1] == "RESOLVED", states
    assert sum(1 for t in slack.threads().values() if inc["id"] in t["root"]["text"]) == 1
    text = thread_text(thread)
    assert "network" in thread["root"]["text"] and "retransmit" in text.lower()
    assert "runbooks.example.com" in text and f"/incidents/{inc['id']}" in text and "BPF" in text
    assert any("Capture by U0ALICE" in r["text"] for r in thread["replies"])
    # the follow-up compares with the baseline from before the burn, so it sees the loss too
    follow_up = [r["text"] for r in thread["replies"] if r["text"].startswith("AdhocCapture")]
    assert len(follow_up) == 1 and follow_up[0].startswith("AdhocCapture: network"), follow_up
    (chart,) = [f for f in slack.files.values() if f.get("thread_ts") == root_ts and f["content"]]
    assert chart["content"].startswith(b"\x89PNG")
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps({
        "threads": slack.threads(),
        "files": [{k: v for k, v in f.items() if k != "content"} | {"bytes": len(f["content"] or b"")}
                  for f in slack.files.values()],
        "calls": [{"method": c["method"], "status": c.get("status")} for c in slack.calls],
        "root_states": states}, indent=1, default=str))


ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "slack-e2e.json"


def _state(call: dict) -> str:
    return str(call["body"].get("text") or "").split("]")[0].lstrip("[").split(" ")[-1].upper()


async def _root_ts(stack, incident_id: str) -> str | None:
    inc = await stack.responder.incident(incident_id)
    return ((inc.get("thread") or {}).get("slack") or {}).get("ts")


async def _thread_with(slack, ts: str, cond) -> dict | None:
    t = slack.threads().get(ts)
    return t if t and cond(t) else None


def _command(slack, text: str) -> bytes:
    return urllib.parse.urlencode({"command": "/llmslo", "text": text, "user_id": "U0ALICE", "channel_id": "C0LLMSLO",
                                   "team_id": "T0LLMSLO", "response_url": slack.response_url("cmd"),
                                   "trigger_id": "1.2.3"}).encode()


def _button(slack, action_id: str, value: str) -> bytes:
    payload = {"type": "block_actions", "user": {"id": "U0ALICE"}, "team": {"id": "T0LLMSLO"},
               "channel": {"id": "C0LLMSLO"}, "response_url": slack.response_url("button"), "trigger_id": "1.2.4",
               "actions": [{"type": "button", "action_id": action_id, "value": value, "block_id": "b"}]}
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


async def _slack_post(stack, body: bytes) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(stack.responder.url + "/slack/events", data=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded", **signed_headers(body)}) as r:
            return r.status, await r.text()

