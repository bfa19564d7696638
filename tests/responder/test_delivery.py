"""The outbox sender against the Slack stand-in: Retry-After honoured, 5xx and timeouts retried
with backoff, a long outage waits in the store (not in the loop), order kept, each step sent once,
charts uploaded into the thread."""
from __future__ import annotations

import base64
import time

import pytest

from responder.delivery import outbox as delivery
from responder.delivery.outbox import Deliverer
from responder.delivery.sinks.slack import SlackSink
from responder.render.thread import Message
from responder.store.sqlite import IncidentStore
from tests.responder.test_store import accept, alert, note
from tests.standins.slack import DEFAULT_TOKEN


@pytest.fixture
async def env(tmp_path, standin):
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    sink = SlackSink(token=DEFAULT_TOKEN, default_channel="#llm-incidents", base_url=standin.base_url, timeout=1)
    incident_id = accept(store, note(alert("fp1"))).incident_id
    yield store, Deliverer(store, {"slack": sink}), incident_id
    await sink.close()
    store.close()


def enqueue(store: IncidentStore, incident_id: str, step: str, op: str, text: str, **extra) -> int:
    return store.enqueue_message(incident_id, "slack", step, {"op": op, "message": Message(text).to_dict(),
                                                               "channel": None, **extra})


@pytest.mark.slow
async def test_429_retry_after_is_honoured_in_place(env, standin):
    store, d, iid = env
    mid = enqueue(store, iid, "root", "root", "root")
    standin.fail_next(1, status=429, retry_after=1)
    t0 = time.monotonic()
    assert await d.deliver_pending() == 1
    posts = standin.calls_to("chat.postMessage")
    assert [c["status"] for c in posts] == [429, 200]
    assert posts[1]["at"] - posts[0]["at"] >= 1.0  # not before the server's Retry-After
    assert time.monotonic() - t0 < 5
    assert store.get_message(mid).state == "sent" and len(standin.threads()) == 1


async def test_a_long_retry_after_waits_in_the_store_not_in_the_loop(env, standin):
    store, d, iid = env
    mid = enqueue(store, iid, "root", "root", "root")
    standin.fail_next(1, status=429, retry_after=120)
    t0 = time.monotonic()
    assert await d.deliver_pending() == 0
    assert time.monotonic() - t0 < 2
    msg = store.get_message(mid)
    assert msg.state == "pending" and msg.attempts == 1 and msg.next_attempt_at >= time.time() + 115
    assert "Retry-After 120" in msg.last_error
    assert store.pending_messages() == []  # not due yet


@pytest.mark.slow
async def test_server_errors_and_timeouts_are_retried_with_backoff(env, standin):
    store, d, iid = env
    enqueue(store, iid, "root", "root", "root")
    standin.fail_next(1, status=503)
    standin.stall_next(1, seconds=3)  # the sink's timeout is 1 s
    assert await d.deliver_pending() == 1
    # After the 503 the post may have happened, so the next attempt looks in the channel first;
    # that lookup is what meets the stall and times out; the third attempt looks, then posts.
    posts = standin.calls_to("chat.postMessage")
    assert [c["status"] for c in posts] == [503, 200]
    assert len(standin.calls) >= 4 and standin.calls_to("conversations.history")
    assert len(standin.threads()) == 1  # posted once


@pytest.mark.slow
async def test_an_outage_is_ridden_out_in_the_store_and_each_step_lands_once_in_order(env, standin, monkeypatch):
    store, d, iid = env
    monkeypatch.setattr(delivery, "backoff", lambda attempts, retry_after: 0.0)  # due again at once
    enqueue(store, iid, "root", "root", "root")
    enqueue(store, iid, "reply:1", "reply", "first reply")
    enqueue(store, iid, "reply:2", "reply", "second reply")
    standin.fail_next(delivery.IN_PLACE_ATTEMPTS * 3, status=500)  # three rounds of in-place retries fail
    rounds = 0
    while store.pending_messages() and rounds < 10:
        await d.deliver_pending()
        rounds += 1
    assert rounds == 4 and store.pending_messages() == []
    (thread,) = standin.threads().values()
    assert [r["text"] for r in thread["replies"]] == ["first reply", "second reply"]
    # the same step enqueued again (a restart re-running the stage) is not a second message
    assert enqueue(store, iid, "reply:1", "reply", "first reply") is None


async def test_a_reply_waits_for_its_root_without_retrying_in_place(env, standin):
    store, d, iid = env
    mid = enqueue(store, iid, "reply:1", "reply", "orphan")
    t0 = time.monotonic()
    assert await d.deliver_pending() == 0
    assert time.monotonic() - t0 < 0.5 and standin.calls == []
    assert "not been posted yet" in store.get_message(mid).last_error


async def test_messages_are_given_up_only_after_a_day(env, standin, monkeypatch):
    store, d, iid = env
    mid = enqueue(store, iid, "root", "root", "root")
    monkeypatch.setattr(delivery, "IN_PLACE_ATTEMPTS", 1)
    standin.fail_next(2, status=500)
    await d.deliver_pending()
    assert store.get_message(mid).state == "pending"
    monkeypatch.setattr(delivery.time, "time", lambda: store.get_message(mid).created_at + delivery.MAX_AGE_S + 1)
    await d.deliver(store.get_message(mid))
    assert store.get_message(mid).state == "dead" and "over 24 h" in store.get_message(mid).last_error


async def test_a_chart_is_uploaded_into_the_thread(env, standin):
    store, d, iid = env
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    enqueue(store, iid, "root", "root", "root")
    enqueue(store, iid, "chart:1", "file", "Burn rate and key signals",
            file={"filename": "chart.png", "title": "inc chart", "content_b64": base64.b64encode(png).decode()})
    assert await d.deliver_pending() == 2
    root_ts = next(iter(standin.threads()))
    (f,) = standin.files.values()
    assert f["content"] == png and f["shared"] and f["thread_ts"] == root_ts and f["title"] == "inc chart"
    assert f["initial_comment"] == "Burn rate and key signals"
    methods = [c["method"] for c in standin.calls]
    assert methods == ["chat.postMessage", "files.getUploadURLExternal", "files.completeUploadExternal"]


async def test_an_edit_replaces_its_reply_in_place_and_waits_for_it(env, standin):
    """A preliminary verdict's reply is later replaced by the capture's: the edit goes to that
    reply's ts with chat.update, never as a second reply; while the reply is not out it waits."""
    store, d, iid = env
    enqueue(store, iid, "root", "root", "root")
    assert await d.deliver_pending() == 1
    enqueue(store, iid, "attribution:1", "reply", "preliminary")
    edit = enqueue(store, iid, "attribution:1:final", "edit", "confirmed", of="attribution:1")
    standin.fail_next(1, status=429, retry_after=120)  # the reply waits in the store
    assert await d.deliver_pending() == 0
    assert await d.deliver_pending() == 0  # the edit's turn: its reply is not out
    assert "has not been posted yet" in store.get_message(edit).last_error
    assert standin.calls_to("chat.update") == []
    for mid in (edit - 1, edit):
        store.mark_retry(mid, "due again", 0.0)
    assert await d.deliver_pending() == 2
    (thread,) = standin.threads().values()
    assert [r["text"] for r in thread["replies"]] == ["confirmed"]
    reply_ts = store.step_message(iid, "slack", "attribution:1").response["ts"]
    updates = [c for c in standin.calls_to("chat.update") if c["status"] == 200]
    assert [u["body"]["ts"] for u in updates] == [reply_ts]
    assert store.get_message(edit).state == "sent" and store.get_message(edit).response == {"updated": reply_ts}


async def test_an_edit_whose_reply_died_is_posted_as_a_reply(env, standin):
    store, d, iid = env
    enqueue(store, iid, "root", "root", "root")
    dead = enqueue(store, iid, "attribution:1", "reply", "preliminary")
    store.mark_dead(dead, "blocks rejected")
    enqueue(store, iid, "attribution:1:final", "edit", "the capture's verdict", of="attribution:1")
    assert await d.deliver_pending() == 2
    (thread,) = standin.threads().values()
    assert [r["text"] for r in thread["replies"]] == ["the capture's verdict"]
    assert standin.calls_to("chat.update") == []
