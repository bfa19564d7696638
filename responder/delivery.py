"""Delivery: sends the outbox's persisted messages to their chat sinks, once, in thread order.

A message is in the store before anything is sent; it is marked sent with the sink's answer
(the thread ``ts``) right after. Failures retry with capped exponential backoff (or the sink's
own Retry-After); a permanent failure is recorded as dead, never retried in a loop. After a
restart, pending messages simply go out, into the thread the store remembers.
"""
from __future__ import annotations

import asyncio
import logging

from responder.report import Message
from responder.sinks.base import ChatSink, SinkPermanentError, SinkRetryableError, ThreadRef
from responder.store import IncidentStore, OutboxMessage

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0


def backoff(attempts: int, retry_after: float | None) -> float:
    delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempts)
    return max(delay, retry_after or 0.0)


class Deliverer:
    def __init__(self, store: IncidentStore, sinks: dict[str, ChatSink], poll_s: float = 1.0):
        self.store = store
        self.sinks = sinks
        self.poll_s = poll_s
        self.wake = asyncio.Event()

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.deliver_pending()
            except Exception:  # the loop must outlive any one bad message
                log.exception("event=delivery_loop_error")
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.poll_s)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def deliver_pending(self) -> int:
        sent = 0
        messages = await asyncio.to_thread(self.store.pending_messages, None, 100)
        blocked: set[tuple[str, str]] = set()  # (incident, sink) whose earlier message is waiting
        for msg in messages:
            key = (msg.incident_id, msg.sink)
            if key in blocked:
                continue
            if await self.deliver(msg):
                sent += 1
            else:
                blocked.add(key)  # keep the thread's order: later steps wait for this one
        return sent

    async def deliver(self, msg: OutboxMessage) -> bool:
        sink = self.sinks.get(msg.sink)
        if sink is None:
            await asyncio.to_thread(self.store.mark_dead, msg.id, f"sink {msg.sink!r} is not configured")
            return False
        inc = await asyncio.to_thread(self.store.get_incident, msg.incident_id)
        thread = (inc.thread or {}).get(msg.sink) if inc else None
        body = msg.body
        message = Message.from_dict(body["message"])
        try:
            if body["op"] == "root":
                if thread:  # already posted (e.g. a crash after posting): never post a second root
                    response = {"already": True, **thread}
                else:
                    ref = await sink.post_root(body.get("channel"), message)
                    response = ref.to_dict()
                    await asyncio.to_thread(self.store.update_incident, msg.incident_id, thread={msg.sink: response})
            else:
                if not thread:
                    raise SinkRetryableError("the thread's root message has not been posted yet")
                ref = ThreadRef.from_dict(thread)
                if body["op"] == "update":
                    await sink.update_root(ref, message)
                    response = {"updated": ref.ts}
                else:
                    response = {"ts": await sink.reply(ref, message)}
        except SinkRetryableError as e:
            if msg.attempts + 1 >= MAX_ATTEMPTS:
                await asyncio.to_thread(self.store.mark_dead, msg.id, f"gave up after {MAX_ATTEMPTS} attempts: {e}")
            else:
                delay = backoff(msg.attempts, e.retry_after)
                await asyncio.to_thread(self.store.mark_retry, msg.id, str(e), delay)
                log.warning("incident=%s event=delivery_retry sink=%s step=%s delay_s=%.1f error=%s",
                            msg.incident_id, msg.sink, msg.step, delay, e)
            return False
        except SinkPermanentError as e:
            await asyncio.to_thread(self.store.mark_dead, msg.id, str(e))
            log.error("incident=%s event=delivery_failed sink=%s step=%s error=%s", msg.incident_id, msg.sink,
                      msg.step, e)
            return False
        await asyncio.to_thread(self.store.mark_sent, msg.id, response)
        log.info("incident=%s event=delivered sink=%s step=%s", msg.incident_id, msg.sink, msg.step)
        return True
