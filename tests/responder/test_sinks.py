"""Chat sinks: SlackSink against the Slack stand-in over a real socket, and the console sink."""
from __future__ import annotations

import io
import json
import socket

import pytest

from capture.attribution.verdict import Evidence, Hypothesis, Verdict
from responder.delivery.sinks.base import ChatSink, SinkPermanentError, SinkRetryableError, ThreadRef
from responder.delivery.sinks.console import ConsoleSink
from responder.delivery.sinks.slack import SlackSink
from responder.render.thread import Message, render_attribution, render_resolved, render_root
from tests.responder.test_report import calibrated
from tests.standins.slack import DEFAULT_TOKEN

URL = "http://responder.example/incidents/inc-7"


@pytest.fixture
async def sink(standin):
    s = SlackSink(token=DEFAULT_TOKEN, default_channel="#llm-incidents", base_url=standin.base_url, timeout=2)
    yield s
    await s.close()


def _incident(**over):
    inc = {"id": "inc-7", "group_key": "g", "status": "firing", "created_at": "2024-11-27T10:00:00Z",
           "resolved_at": None, "labels": {"alertname": "LLMErrorBudgetBurn"},
           "alerts": [{"labels": {}, "annotations": {}, "startsAt": "2024-11-27T10:00:00Z", "generatorURL": ""}],
           "playbook": None, "verdict": None, "capture": None, "report": None, "thread": None, "error": None}
    inc.update(over)
    return inc


def _verdict() -> Verdict:
    ev = Evidence("tcp_retrans.retransmits_per_s", "retransmits up 40x", 0.5, 20.0, "/s")
    return calibrated(Verdict(["network"], 0.77, [Hypothesis("network", 0.77, supporting=[ev])]))


async def test_root_update_and_reply_land_in_one_thread(standin, sink):
    assert isinstance(sink, ChatSink)
    inc = _incident()
    thread = await sink.post_root(None, render_root(inc, URL))
    assert thread.channel == "C0LLMSLO" and thread.ts

    inc["verdict"] = _verdict().to_dict()
    await sink.edit(thread, render_root(inc, URL))
    reply_ts = await sink.reply(thread, render_attribution(inc, _verdict(), None, [], URL))
    inc.update(status="resolved", resolved_at="2024-11-27T10:04:12Z")
    await sink.edit(thread, render_root(inc, URL))
    await sink.reply(thread, render_resolved(inc))

    threads = standin.threads()
    assert list(threads) == [thread.ts]
    root = threads[thread.ts]["root"]
    assert "RESOLVED" in root["text"] and "edited" in root
    assert "RESOLVED" in root["blocks"][0]["text"]["text"]
    replies = threads[thread.ts]["replies"]
    assert [r["ts"] for r in replies][0] == reply_ts and float(reply_ts) > float(thread.ts)
    assert "network (77% confidence)" in replies[0]["text"] and replies[0]["blocks"][0]["type"] == "header"
    assert "burned for 4m 12s" in replies[1]["text"]
    # slack-sdk sends JSON bodies with the bot token; the stand-in saw every call
    assert [c["method"] for c in standin.calls] == ["chat.postMessage", "chat.update", "chat.postMessage",
                                                    "chat.update", "chat.postMessage"]
    assert all(c["content_type"].startswith("application/json") for c in standin.calls)


async def test_explicit_channel_and_auth_check(standin, sink):
    thread = await sink.post_root("C0LLMSLO", Message(text="hello"))
    assert thread == ThreadRef("C0LLMSLO", thread.ts)
    assert ThreadRef.from_dict(thread.to_dict()) == thread
    assert (await sink.check())["bot_id"]


async def test_429_is_retryable_with_retry_after(standin, sink):
    standin.fail_next(1, status=429, retry_after=7)
    with pytest.raises(SinkRetryableError) as err:
        await sink.post_root(None, Message(text="hi"))
    assert err.value.retry_after == 7.0
    # exactly one attempt: slack-sdk's own retry handlers are off, the outbox retries
    assert len(standin.calls) == 1
    thread = await sink.post_root(None, Message(text="hi"))
    assert thread.ts in standin.threads()


async def test_500_is_retryable(standin, sink):
    thread = await sink.post_root(None, Message(text="root"))
    standin.fail_next(2, status=500)
    with pytest.raises(SinkRetryableError) as err:
        await sink.reply(thread, Message(text="r"))
    assert err.value.retry_after is None
    with pytest.raises(SinkRetryableError):
        await sink.edit(thread, Message(text="root v2"))
    assert len(standin.calls) == 3
    await sink.reply(thread, Message(text="r"))
    assert len(standin.threads()[thread.ts]["replies"]) == 1


async def test_channel_not_found_is_permanent(standin, sink):
    with pytest.raises(SinkPermanentError) as err:
        await sink.post_root("#nowhere", Message(text="hi"))
    assert err.value.code == "channel_not_found" and "LLMSLO_SLACK_CHANNEL" in str(err.value)


async def test_update_of_unknown_message_is_permanent(standin, sink):
    with pytest.raises(SinkPermanentError) as err:
        await sink.edit(ThreadRef("C0LLMSLO", "1.000000"), Message(text="x"))
    assert err.value.code == "message_not_found"


async def test_bad_token_is_permanent(standin):
    bad = SlackSink(token="xoxb-wrong", default_channel="#llm-incidents", base_url=standin.base_url)
    try:
        with pytest.raises(SinkPermanentError) as err:
            await bad.post_root(None, Message(text="hi"))
        assert err.value.code == "invalid_auth"
    finally:
        await bad.close()
    assert standin.threads() == {}


async def test_timeout_and_refused_connection_are_retryable(standin):
    quick = SlackSink(token=DEFAULT_TOKEN, default_channel="#llm-incidents", base_url=standin.base_url,
                      timeout=0.2)
    try:
        standin.stall_next(1, seconds=0.6)
        with pytest.raises(SinkRetryableError):
            await quick.post_root(None, Message(text="slow"))
    finally:
        await quick.close()

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = SlackSink(token=DEFAULT_TOKEN, default_channel="#llm-incidents",
                     base_url=f"http://127.0.0.1:{port}/api/", timeout=2)
    try:
        with pytest.raises(SinkRetryableError):
            await dead.post_root(None, Message(text="hi"))
    finally:
        await dead.close()


async def test_standin_accepts_form_bodies_and_rejects_oversized_blocks(standin):
    import aiohttp

    async with aiohttp.ClientSession() as http:
        form = {"token": DEFAULT_TOKEN, "channel": "#llm-incidents", "text": "form post",
                "blocks": json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}])}
        async with http.post(standin.base_url + "chat.postMessage", data=form) as r:
            body = await r.json()
        assert body["ok"] and body["channel"] == "C0LLMSLO"
        big = {"channel": "C0LLMSLO", "text": "t", "blocks": [{"type": "divider"}] * 51}
        async with http.post(standin.base_url + "chat.postMessage", json=big,
                             headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}) as r:
            body = await r.json()
        assert r.status == 200 and body == {**body, "ok": False, "error": "invalid_blocks"}


async def test_console_sink_prints_and_writes_json_lines(tmp_path):
    out = io.StringIO()
    path = tmp_path / "chat" / "thread.jsonl"
    sink = ConsoleSink(path, stream=out)
    assert isinstance(sink, ChatSink)
    thread = await sink.post_root("#llm-incidents", Message(text="root text", blocks=[{"type": "divider"}]))
    await sink.edit(thread, Message(text="root text v2"))
    reply_ts = await sink.reply(thread, Message(text="reply text"))
    await sink.close()

    assert thread.channel == "console" and float(reply_ts) > float(thread.ts)
    printed = out.getvalue()
    assert "root text" in printed and "root text v2" in printed and "reply text" in printed
    assert f"thread console:{thread.ts} · root" in printed and "· update" in printed and "· reply" in printed

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["op"] for r in lines] == ["root", "update", "reply"]
    assert all(r["thread_ts"] == thread.ts for r in lines)
    assert lines[0]["requested_channel"] == "#llm-incidents"
    assert Message.from_dict(lines[0]["message"]) == Message(text="root text", blocks=[{"type": "divider"}])
    assert lines[2]["ts"] == reply_ts


async def test_console_sink_without_file():
    out = io.StringIO()
    sink = ConsoleSink(None, stream=out)
    thread = await sink.post_root(None, Message(text="only stdout"))
    assert "only stdout" in out.getvalue() and thread.ts
