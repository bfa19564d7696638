"""Delivery that a bad message cannot stop: a send that fails in a way no sink declares is retried
with backoff and then parked as dead without holding back any other thread; a dead root takes its
replies with it; a message an interrupted attempt may have posted is looked for before it is
posted again (Slack's history by the outbox key, the console sink's own file)."""
from __future__ import annotations

import io
import json

import pytest

from responder.delivery import outbox as delivery
from responder.delivery.outbox import MAX_UNEXPECTED_FAILURES, Deliverer
from responder.delivery.sinks.console import ConsoleSink
from responder.delivery.sinks.slack import SlackSink
from responder.render.thread import Message
from responder.store.sqlite import IncidentStore
from tests.responder.test_store import accept, alert, note
from tests.standins.slack import DEFAULT_TOKEN


def enqueue(store, incident_id: str, sink: str, step: str, op: str, text: str) -> int:
    return store.enqueue_message(incident_id, sink, step, {"op": op, "message": Message(text).to_dict(),
                                                            "channel": None})


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(delivery, "backoff", lambda attempts, retry_after: 0.0)


async def test_a_message_a_sink_cannot_print_is_parked_dead_and_holds_back_no_other_thread(tmp_path, no_backoff):
    """Before, the console sink's UnicodeEncodeError escaped the loop on the same message every
    second, counted no attempt, and every later message of every incident stayed pending."""
    store = IncidentStore(tmp_path / "s.sqlite3")
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # stdout, as the console sink has it
    d = Deliverer(store, {"console": ConsoleSink(tmp_path / "reports.jsonl", stream=stream)})
    bad = accept(store, note(alert("a"), group_key="bad")).incident_id
    good = accept(store, note(alert("b"), group_key="good")).incident_id
    bad_root = enqueue(store, bad, "console", "root", "root", "x\ud800: a lone surrogate")
    bad_reply = enqueue(store, bad, "console", "attribution:1", "reply", "reply")
    enqueue(store, good, "console", "root", "root", "plain root")
    enqueue(store, good, "console", "attribution:1", "reply", "plain reply")
    for _ in range(MAX_UNEXPECTED_FAILURES + 2):
        await d.deliver_pending()
    assert store.counts()["messages"] == {"pending": 0, "sent": 2, "dead": 2}
    root = store.get_message(bad_root)
    assert root.state == "dead" and root.attempts == MAX_UNEXPECTED_FAILURES
    assert "UnicodeEncodeError" in root.last_error
    assert store.get_message(bad_reply).last_error == "its thread's root message is dead"
    sent = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert [r["message"]["text"] for r in sent] == ["plain root", "plain reply"]
    store.close()


async def test_an_unexpected_error_in_any_sink_is_counted_and_retried(tmp_path, no_backoff):
    class Flaky(ConsoleSink):
        calls = 0

        async def post_root(self, channel, message, key=None):
            Flaky.calls += 1
            if Flaky.calls < 3:
                raise KeyError("a bug in a sink")
            return await super().post_root(channel, message, key)

    store = IncidentStore(tmp_path / "s.sqlite3")
    d = Deliverer(store, {"console": Flaky(tmp_path / "r.jsonl", stream=io.StringIO())})
    iid = accept(store, note(alert("a"))).incident_id
    mid = enqueue(store, iid, "console", "root", "root", "root")
    for _ in range(3):
        await d.deliver_pending()
    msg = store.get_message(mid)
    assert msg.state == "sent" and msg.attempts == 2 and Flaky.calls == 3
    store.close()


async def test_the_console_sink_finds_a_root_it_wrote_before_a_crash(tmp_path):
    """The root line was written, then the process died before the outbox recorded it: the next
    attempt finds it by its key in the file and does not write a second root."""
    store = IncidentStore(tmp_path / "s.sqlite3")
    sink = ConsoleSink(tmp_path / "r.jsonl", stream=io.StringIO())
    iid = accept(store, note(alert("a"))).incident_id
    mid = enqueue(store, iid, "console", "root", "root", "root")
    store.mark_sending(mid)  # what the crashed attempt recorded before it posted
    ref = await sink.post_root(None, Message("root"), f"{iid}/root")  # ... and what it posted
    await Deliverer(store, {"console": sink}).deliver_pending()
    msg = store.get_message(mid)
    assert msg.state == "sent" and msg.response.get("found") is True
    assert store.get_incident(iid).thread["console"] == ref.to_dict()
    roots = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["op"] for r in roots] == ["root"]
    store.close()


@pytest.fixture
async def slack_env(tmp_path, standin):
    store = IncidentStore(tmp_path / "s.sqlite3")
    sink = SlackSink(token=DEFAULT_TOKEN, default_channel="#llm-incidents", base_url=standin.base_url, timeout=1)
    yield store, sink
    await sink.close()
    store.close()


@pytest.mark.slow
async def test_a_root_whose_answer_was_lost_is_found_in_the_channel_not_posted_again(slack_env, standin):
    store, sink = slack_env
    iid = accept(store, note(alert("a"))).incident_id
    mid = enqueue(store, iid, "slack", "root", "root", "root")
    standin.hang_after_next("chat.postMessage", seconds=5)  # posted; the answer times out (1 s)
    await Deliverer(store, {"slack": sink}).deliver_pending()
    assert len(standin.threads()) == 1
    msg = store.get_message(mid)
    assert msg.state == "sent" and msg.response["found"] is True and msg.sending_at is not None
    assert standin.calls_to("conversations.list") and standin.calls_to("conversations.history")
    assert store.get_incident(iid).thread["slack"]["ts"] == next(iter(standin.threads()))


@pytest.mark.slow
async def test_a_reply_posted_before_a_crash_is_not_posted_twice(slack_env, standin):
    store, sink = slack_env
    iid = accept(store, note(alert("a"))).incident_id
    enqueue(store, iid, "slack", "root", "root", "root")
    d = Deliverer(store, {"slack": sink})
    await d.deliver_pending()
    reply = enqueue(store, iid, "slack", "attribution:1", "reply", "the verdict")
    standin.hang_after_next("chat.postMessage", seconds=5)
    await d.deliver_pending()
    thread = next(iter(standin.threads().values()))
    assert [r["text"] for r in thread["replies"]] == ["the verdict"]
    msg = store.get_message(reply)
    assert msg.state == "sent" and msg.response["found"] is True
    assert standin.calls_to("conversations.replies")


async def test_without_the_history_scope_a_root_is_posted_at_least_once(slack_env, standin):
    store, sink = slack_env
    iid = accept(store, note(alert("a"))).incident_id
    mid = enqueue(store, iid, "slack", "root", "root", "root")
    store.mark_sending(mid)
    standin.fail_next(1, status=200, error="missing_scope")  # conversations.list refused
    await Deliverer(store, {"slack": sink}).deliver_pending()
    assert store.get_message(mid).state == "sent" and len(standin.threads()) == 1
