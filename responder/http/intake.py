"""The webhook's store writer: group commit for Alertmanager notifications.

Each accepted request hands its parsed notification to one writer task and waits. The writer
takes everything that queued up while its previous transaction committed (up to a bound in
notifications and in alerts), stores it in one transaction with ``StoreBase.accept_batch`` and
answers every waiting request after that single commit. A storm of small notifications thus
costs one fsync per batch instead of one per request, and no transaction holds the store's lock
for long: a batch is bounded, and one huge notification is a batch of its own.

A request is answered only after its batch committed (nothing acknowledged is lost). When the
store cannot be written, every request of the batch gets ``StoreUnavailable`` (the webhook
answers 503, Alertmanager retries); while the health state says the store is down, requests are
refused at once without queueing.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from common.aio import get_within
from responder.health import Health
from responder.store.base import AcceptResult, NotificationLike, StoreBase, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

# Bounds of one transaction: notifications, and alerts across them (the alert count drives the
# time a batch holds the lock; about 10 µs per alert on SQLite here).
MAX_BATCH_NOTIFICATIONS = 256
MAX_BATCH_ALERTS = 5_000
# Requests waiting for the writer beyond this are refused with 503 at once (the queue is memory).
MAX_QUEUED = 4_096


@dataclass
class _Item:
    notification: NotificationLike
    raw: bytes
    alerts: int
    done: asyncio.Future


class IntakeWriter:
    def __init__(self, store: StoreBase, health: Health, max_pending_jobs: int, on_job: Callable[[], None]) -> None:
        self.store = store
        self.health = health
        self.max_pending_jobs = max_pending_jobs
        self.on_job = on_job
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.batches = 0
        self.notifications = 0

    async def accept(self, notification: NotificationLike, raw: bytes) -> AcceptResult:
        """Store one notification; its AcceptResult once committed. Raises StoreUnavailable
        (the store cannot be written, or the queue is full) or another StoreError (Overloaded)."""
        if not self.health.store_up:
            raise StoreUnavailable(f"the incident store cannot be written ({self.health.store_error})")
        if self._queue.qsize() >= MAX_QUEUED:
            raise StoreUnavailable(f"{MAX_QUEUED} notifications are waiting to be stored")
        item = _Item(notification, raw, len(notification.alerts), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        return await item.done

    async def run(self) -> None:
        while True:
            self.health.progress("intake")
            first = await get_within(self._queue, 5.0)
            if first is None:
                continue  # idle: still alive
            batch = [first]
            alerts = first.alerts
            while (not self._queue.empty() and len(batch) < MAX_BATCH_NOTIFICATIONS
                   and alerts < MAX_BATCH_ALERTS):
                item = self._queue.get_nowait()
                batch.append(item)
                alerts += item.alerts
            await self._write(batch)

    async def _write(self, batch: list[_Item]) -> None:
        live = [i for i in batch if not i.done.cancelled()]  # a request whose client went away
        if not live:
            return
        try:
            results = await asyncio.to_thread(self.store.accept_batch, [(i.notification, i.raw) for i in live],
                                              self.max_pending_jobs)
        except StoreError as e:  # the store told the health state itself (StoreBase.watch)
            for i in live:
                _settle(i.done, exc=e)
            return
        except Exception as e:  # a bug: refuse this batch (the senders retry), keep the writer
            log.exception("event=intake_batch_failed notifications=%s", len(live))
            for i in live:
                _settle(i.done, exc=StoreError(f"internal error storing the notification ({type(e).__name__})"))
            return
        self.batches += 1
        self.notifications += len(live)
        woke = False
        for i, r in zip(live, results):
            if isinstance(r, Exception):
                _settle(i.done, exc=r)
            else:
                _settle(i.done, result=r)
                woke = woke or r.job_id is not None
        if woke:
            self.on_job()


def _settle(fut: asyncio.Future, result=None, exc: BaseException | None = None) -> None:
    if fut.done():  # the request was cancelled (client gone) after the write: it is stored anyway
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
