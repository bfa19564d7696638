"""Delivery: sends the outbox's persisted messages to their chat sinks, once, in thread order.

A message is in the store before anything is sent; it is marked sent with the sink's answer
(the thread ``ts``) right after. A retryable failure (429, 5xx, timeout) is first retried in
place with tenacity (exponential backoff with jitter, never sooner than the server's
Retry-After, and only while the wait stays short); past that the message is rescheduled in the
store with a longer backoff, so an outage of any length neither blocks the loop nor loses it. A
permanent failure is recorded as dead, never retried in a loop. After a restart, pending
messages simply go out, into the thread the store remembers; the outbox key (incident, sink,
step) makes each step one message. With several replicas on one database, each sends only the
messages the store leased to it (``claim_messages``), and re-takes the lease right before each
send (``hold_message``), so no message is posted by two replicas.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from responder.report import Message
from responder.sinks.base import ChatSink, SinkPermanentError, SinkRetryableError, ThreadRef
from responder.store import OutboxMessage, StoreBase

log = logging.getLogger(__name__)

# A retryable failure is retried until the message is this old (a long chat outage loses
# nothing); only then is it given up as dead.
MAX_AGE_S = 24 * 3600.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
# In place: a few quick retries, as long as no single wait is longer than this.
IN_PLACE_ATTEMPTS = 3
IN_PLACE_MAX_WAIT_S = 10.0
_in_place_backoff = wait_exponential_jitter(multiplier=0.5, max=IN_PLACE_MAX_WAIT_S, jitter=0.5)


def backoff(attempts: int, retry_after: float | None) -> float:
    delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempts)
    return max(delay, retry_after or 0.0)


def _retry_after(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    return float(getattr(exc, "retry_after", None) or 0.0)


def _in_place_wait(state: RetryCallState) -> float:
    """Exponential backoff with jitter, but never sooner than the server's Retry-After."""
    return max(_in_place_backoff(state), _retry_after(state))


class NoThreadYet(SinkRetryableError):
    """A reply whose thread's root is not posted yet: waits in the store, not in place."""


def _retry_in_place(e: BaseException) -> bool:
    return isinstance(e, SinkRetryableError) and not isinstance(e, NoThreadYet)


def _server_wants_long_wait(state: RetryCallState) -> bool:
    return _retry_after(state) > IN_PLACE_MAX_WAIT_S


async def with_retries(call):
    """``await call()``, retried in place on SinkRetryableError (see the module's docstring)."""
    async for attempt in AsyncRetrying(retry=retry_if_exception(_retry_in_place), wait=_in_place_wait,
                                       stop=stop_after_attempt(IN_PLACE_ATTEMPTS) | _server_wants_long_wait,
                                       reraise=True):
        with attempt:
            return await call()


class Deliverer:
    def __init__(self, store: StoreBase, sinks: dict[str, ChatSink], poll_s: float = 1.0):
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
        messages = await asyncio.to_thread(self.store.claim_messages, 100)
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
        if not await asyncio.to_thread(self.store.hold_message, msg.id):
            return False  # sent meanwhile, or another replica has it now
        inc = await asyncio.to_thread(self.store.get_incident, msg.incident_id)
        thread = (inc.thread or {}).get(msg.sink) if inc else None
        try:
            response = await with_retries(lambda: self._send(sink, msg, thread))
        except SinkRetryableError as e:
            if time.time() - msg.created_at >= MAX_AGE_S:
                await asyncio.to_thread(self.store.mark_dead, msg.id,
                                        f"gave up after {msg.attempts + 1} attempts over {MAX_AGE_S / 3600:g} h: {e}")
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

    async def _send(self, sink: ChatSink, msg: OutboxMessage, thread: dict | None) -> dict:
        """One attempt at ``msg``'s operation; the sink's answer to store with it."""
        body = msg.body
        message = Message.from_dict(body["message"])
        if body["op"] == "root":
            if thread:  # already posted (e.g. a crash after posting): never post a second root
                return {"already": True, **thread}
            ref = await sink.post_root(body.get("channel"), message)
            await asyncio.to_thread(self.store.update_incident, msg.incident_id, thread={msg.sink: ref.to_dict()})
            return ref.to_dict()
        if not thread:
            raise NoThreadYet("the thread's root message has not been posted yet")
        ref = ThreadRef.from_dict(thread)
        if body["op"] == "update":
            await sink.update_root(ref, message)
            return {"updated": ref.ts}
        if body["op"] == "file":
            f = body["file"]
            return {"file": await sink.upload_file(ref, f["filename"], base64.b64decode(f["content_b64"]), f["title"],
                                                   message.text)}
        return {"ts": await sink.reply(ref, message)}
