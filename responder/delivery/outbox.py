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

Exactly once, also across a crash: before an attempt that could create a message (a thread root
or a reply), the store records that one began (``mark_sending``), and the message carries its
outbox key (incident and step) where the chat platform keeps it (Slack's message metadata). A
later attempt of a message so marked first asks the sink whether it arrived (``find_root`` /
``find_reply``) and records it instead of posting it again. A message that fails with an error
nobody expected (a bug, bad data) is retried with backoff like an outage and, after
MAX_UNEXPECTED_FAILURES, parked as dead with the reason; it never holds back other threads, and
a dead root takes its thread's replies with it. ``llmslo dead`` lists and retries them.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.stop import stop_base

from common.aio import wait_set
from responder.delivery.sinks.base import ChatSink, SinkPermanentError, SinkRetryableError, ThreadRef
from responder.render.thread import Message
from responder.store.base import OutboxMessage, StoreBase, StoreError

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
# A message whose send raised something no sink declares (a bug, data it cannot handle) is
# tried this many times, with the usual backoff, then dead.
MAX_UNEXPECTED_FAILURES = 5
# How far before an interrupted attempt a lookup for its message starts (clock skew).
LOOKUP_SLACK_S = 120.0


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


class _ServerWantsLongWait(stop_base):  # a stop_base, not a bare function, so that it combines with |
    def __call__(self, retry_state: RetryCallState) -> bool:
        return _retry_after(retry_state) > IN_PLACE_MAX_WAIT_S


async def with_retries(call):
    """``await call()``, retried in place on SinkRetryableError (see the module's docstring)."""
    async for attempt in AsyncRetrying(retry=retry_if_exception(_retry_in_place), wait=_in_place_wait,
                                       stop=stop_after_attempt(IN_PLACE_ATTEMPTS) | _ServerWantsLongWait(),
                                       reraise=True):
        with attempt:
            return await call()


class Deliverer:
    def __init__(self, store: StoreBase, sinks: dict[str, ChatSink], poll_s: float = 1.0, health=None):
        self.store = store
        self.sinks = sinks
        self.poll_s = poll_s
        self.wake = asyncio.Event()
        self.health = health  # responder.health.Health, told of each pass and of store trouble

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        while True:
            if self.health is not None:
                self.health.progress("delivery")
            try:
                await self.deliver_pending()
            except StoreError as e:  # the store is away: nothing can be claimed or recorded now
                log.warning("event=delivery_store_error error=%s", e)
            await wait_set(self.wake, self.poll_s)
            self.wake.clear()

    async def deliver_pending(self) -> int:
        sent = 0
        messages = await asyncio.to_thread(self.store.claim_messages, 100)
        blocked: set[tuple[str, str]] = set()  # (incident, sink) whose earlier message is waiting
        for msg in messages:
            key = (msg.incident_id, msg.sink)
            if key in blocked:
                continue
            if self.health is not None:
                self.health.progress("delivery")
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
        except NoThreadYet as e:
            root = await asyncio.to_thread(self.store.thread_root_state, msg.incident_id, msg.sink)
            if root == "dead":  # the thread will never exist: this message cannot be posted either
                await asyncio.to_thread(self.store.mark_dead, msg.id, "its thread's root message is dead")
                log.error("incident=%s event=delivery_failed sink=%s step=%s error=root_dead", msg.incident_id,
                          msg.sink, msg.step)
                return False
            await self._retry_or_give_up(msg, e, e.retry_after)
            return False
        except SinkRetryableError as e:
            await self._retry_or_give_up(msg, e, e.retry_after)
            return False
        except SinkPermanentError as e:
            await asyncio.to_thread(self.store.mark_dead, msg.id, str(e))
            log.error("incident=%s event=delivery_failed sink=%s step=%s error=%s", msg.incident_id, msg.sink,
                      msg.step, e)
            return False
        except StoreError:
            raise  # the store is away: the run loop waits for it; the message stays pending
        except Exception as e:  # the boundary of one message: a bug or bad data must not stop delivery
            log.exception("incident=%s event=delivery_error sink=%s step=%s attempt=%s", msg.incident_id, msg.sink,
                          msg.step, msg.attempts + 1)
            what = f"unexpected {type(e).__name__}: {e}"[:1000]
            if msg.attempts + 1 >= MAX_UNEXPECTED_FAILURES:
                await asyncio.to_thread(self.store.mark_dead, msg.id,
                                        f"gave up after {msg.attempts + 1} attempts: {what}")
                log.error("incident=%s event=delivery_failed sink=%s step=%s error=poison", msg.incident_id,
                          msg.sink, msg.step)
            else:
                await asyncio.to_thread(self.store.mark_retry, msg.id, what, backoff(msg.attempts, None))
            return False
        await asyncio.to_thread(self.store.mark_sent, msg.id, response)
        log.info("incident=%s event=delivered sink=%s step=%s", msg.incident_id, msg.sink, msg.step)
        return True

    async def _retry_or_give_up(self, msg: OutboxMessage, e: Exception, retry_after: float | None) -> None:
        if time.time() - msg.created_at >= MAX_AGE_S:
            await asyncio.to_thread(self.store.mark_dead, msg.id,
                                    f"gave up after {msg.attempts + 1} attempts over {MAX_AGE_S / 3600:g} h: {e}")
            return
        delay = backoff(msg.attempts, retry_after)
        await asyncio.to_thread(self.store.mark_retry, msg.id, str(e), delay)
        log.warning("incident=%s event=delivery_retry sink=%s step=%s delay_s=%.1f error=%s",
                    msg.incident_id, msg.sink, msg.step, delay, e)

    async def _edited_reply(self, msg: OutboxMessage, step: str) -> str | None:
        """The ``ts`` of the reply at ``step`` that ``msg`` replaces; None when that reply is
        dead or was never enqueued. One still on its way makes ``msg`` wait (NoThreadYet)."""
        target = await asyncio.to_thread(self.store.step_message, msg.incident_id, msg.sink, step)
        if target is None or target.state == "dead":
            return None
        ts = (target.response or {}).get("ts")
        if target.state != "sent" or not ts:
            raise NoThreadYet(f"the reply it edits ({step}) has not been posted yet")
        return str(ts)

    async def _began(self, msg: OutboxMessage) -> None:
        """Record that an attempt that may create the message starts now (see the module doc)."""
        if msg.sending_at is None:
            await asyncio.to_thread(self.store.mark_sending, msg.id)
            msg.sending_at = time.time()

    async def _already_posted(self, lookup) -> Any:
        """What ``lookup()`` finds of a message an interrupted attempt may have posted; None when
        it is not there, or when the sink cannot look (then it is posted: at least once)."""
        try:
            return await lookup()
        except SinkPermanentError as e:
            log.warning("event=delivery_lookup_unavailable error=%s", e)
            return None

    async def _send(self, sink: ChatSink, msg: OutboxMessage, thread: dict | None) -> dict:
        """One attempt at ``msg``'s operation; the sink's answer to store with it."""
        body = msg.body
        message = Message.from_dict(body["message"])
        key = f"{msg.incident_id}/{msg.step}"
        if body["op"] == "root":
            if thread:  # already posted (e.g. a crash after posting): never post a second root
                return {"already": True, **thread}
            ref: ThreadRef | None = None
            if msg.sending_at is not None:
                ref = await self._already_posted(
                    lambda: sink.find_root(body.get("channel"), key, msg.sending_at - LOOKUP_SLACK_S))
            found = ref is not None
            if ref is None:
                await self._began(msg)
                ref = await sink.post_root(body.get("channel"), message, key)
            await asyncio.to_thread(self.store.update_incident, msg.incident_id, thread={msg.sink: ref.to_dict()})
            return ref.to_dict() | ({"found": True} if found else {})
        if not thread:
            raise NoThreadYet("the thread's root message has not been posted yet")
        ref = ThreadRef.from_dict(thread)
        if body["op"] == "update":
            await sink.edit(ref, message)
            return {"updated": ref.ts}
        if body["op"] == "edit":
            ts = await self._edited_reply(msg, body["of"])
            if ts is not None:
                await sink.edit(ref, message, ts)
                return {"updated": ts}
            # the reply it replaces never made it (dead): this version is posted as a reply of its own
        if body["op"] == "file":
            f = body["file"]
            return {"file": await sink.upload_file(ref, f["filename"], base64.b64decode(f["content_b64"]), f["title"],
                                                   message.text)}
        if msg.sending_at is not None:
            ts = await self._already_posted(lambda: sink.find_reply(ref, key, msg.sending_at - LOOKUP_SLACK_S))
            if ts is not None:
                return {"ts": ts, "found": True}
        await self._began(msg)
        return {"ts": await sink.reply(ref, message, key)}
