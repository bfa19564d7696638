"""The responder's wiring: settings in, then the store, agent clients, sinks, pipeline, intake and
health built and handed to each other; the workers that run investigations; start and stop.
The HTTP routes over it are in ``responder.http.api``.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from capture import kube
from capture.agent import CaptureAgent
from capture.client import HttpAgentClient, LocalAgentClient
from capture.probes import CATALOG
from common.aio import cancel_all, wait_set
from responder.config import ConfigError, Settings
from responder.delivery.outbox import Deliverer
from responder.delivery.sinks.base import ChatSink
from responder.delivery.sinks.console import ConsoleSink
from responder.delivery.sinks.slack import SlackSink
from responder.evidence.traces.backends import TraceBackend, backend_from_settings
from responder.evidence.traces.store import SpanStore
from responder.health import Health, StoreProbe, supervise
from responder.http.alertmanager import parse_notification
from responder.http.api import Api
from responder.http.intake import IntakeWriter
from responder.kube.cluster import KubeAgents, KubeCluster
from responder.model import adhoc
from responder.pipeline import Pipeline
from responder.playbooks import PlaybookLoadError, load_playbooks
from responder.store import open_store
from responder.store.base import AcceptResult, Overloaded, StoreBase, StoreError, StoreUnavailable, job_backoff

log = logging.getLogger(__name__)

# A job that runs longer than this is cancelled (every probe detaches) and retried: a capture is
# at most 120 s, the evidence and onset reads a few timeouts more.
JOB_TIMEOUT_S = 600.0
# Store calls go through the default executor. While the database is locked every one of them
# waits there up to the busy timeout; enough threads that they never starve the rest (span
# decoding, the incident page) of a thread.
EXECUTOR_THREADS = 32
# Between claims while the store cannot be read.
CLAIM_RETRY_S = 2.0


@dataclass
class Responder:
    """Everything the running service holds, built from settings."""

    settings: Settings
    store: StoreBase
    agent: LocalAgentClient | HttpAgentClient | KubeAgents
    sinks: dict[str, ChatSink]
    pipeline: Pipeline
    deliverer: Deliverer
    spans: SpanStore
    traces: TraceBackend
    intake: IntakeWriter
    wake_workers: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    active_jobs: dict[int, str] = field(default_factory=dict)  # job id -> incident id, while a worker runs it
    slack_app: Any = None  # responder.slack.app.SlackApp when Slack's bot token and signing secret are set
    health: Health = field(default_factory=Health)

    @classmethod
    def build(cls, settings: Settings, console_stream=None) -> Responder:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            probe = settings.data_dir / f".write-check-{os.getpid()}"
            probe.write_bytes(b"")  # the store, reports and files all go here: fail now, not mid-incident
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"data_dir: {settings.data_dir} cannot be written: {e.strerror}") from None
        try:
            playbooks = load_playbooks(settings.playbooks_dir, set(CATALOG))
        except PlaybookLoadError as e:
            more = len(e.problems) - 1
            raise ConfigError(f"playbooks_dir: {e.problems[0].format()}"
                              + (f" (and {more} more; see llmslo playbooks validate {settings.playbooks_dir})"
                                 if more else "")) from None
        try:
            store = open_store(settings.database_url, settings.store_path)
        except StoreError as e:
            raise ConfigError(f"{'database_url' if settings.database_url else 'data_dir'}: the incident store "
                              f"did not open: {e}") from None
        cluster = None
        agent: LocalAgentClient | HttpAgentClient | KubeAgents
        if settings.agent_discovery == "kubernetes":
            try:
                cluster = KubeCluster.from_settings(settings)
            except Exception as e:  # no service account, a broken kubeconfig: say which, do not start
                raise ConfigError(f"Kubernetes API configuration: {type(e).__name__}: {e}") from None
            agent = KubeAgents(cluster, settings.agent_token or "")
        elif settings.agent_url:
            agent = HttpAgentClient(settings.agent_url, settings.agent_token or "")
        else:
            agent = LocalAgentClient(CaptureAgent(settings.node_name, recorder_interval_s=settings.recorder_interval_s,
                                                  recorder_history_s=settings.recorder_history_s,
                                                  kube=kube.from_env(settings.node_name),
                                                  early_warning_cgroups=tuple(
                                                      p.strip() for p in settings.agent_early_warning_cgroups.split(",")
                                                      if p.strip())))
        sinks: dict[str, ChatSink] = {}
        sinks["console"] = ConsoleSink(settings.data_dir / "reports.jsonl", stream=console_stream or sys.stdout)
        if settings.slack_bot_token:
            sinks["slack"] = SlackSink(settings.slack_bot_token, settings.slack_channel, base_url=settings.slack_api_url)
        health, wake_workers = Health(), asyncio.Event()
        store.watch(health.store_failed, health.store_ok)
        deliverer = Deliverer(store, sinks, health=health)
        # The built-in receiver always listens (an OTLP exporter can point here whatever back-end
        # the evidence is read from); it holds spans in memory only, bounded by the settings.
        spans = SpanStore(settings.span_store_max_spans, settings.span_store_max_bytes)
        traces = backend_from_settings(settings, spans)
        pipeline = Pipeline(store, playbooks, agent, list(sinks), settings, traces, on_enqueued=deliverer.notify,
                            kube=cluster)
        intake = IntakeWriter(store, health, settings.max_pending_jobs, wake_workers.set)
        responder = cls(settings, store, agent, sinks, pipeline, deliverer, spans, traces, intake,
                        wake_workers=wake_workers, health=health)
        if settings.slack_bot_token and settings.slack_signing_secret:
            from responder.slack.app import SlackApp

            responder.slack_app = SlackApp(responder, settings)
        return responder

    # --- workers ----------------------------------------------------------------------------
    async def worker(self, n: int) -> None:
        """Claim a job, run it (bounded by JOB_TIMEOUT_S), record its outcome; for ever. Any
        failure of a job sends it back to the queue with a counted attempt and a backoff (dead
        after MAX_JOB_ATTEMPTS); a store that cannot be written only delays the loop."""
        name = f"worker-{n}"
        while True:
            self.health.busy(name, None)
            try:
                job = await asyncio.to_thread(self.store.claim_job)
            except StoreError as e:  # the database is away or locked: keep the worker, try again
                self._store_trouble(e, "job_claim_failed", worker=n)
                await asyncio.sleep(CLAIM_RETRY_S)
                continue
            if job is None:
                await wait_set(self.wake_workers, 2.0)
                self.wake_workers.clear()
                continue
            log.info("incident=%s event=job_start job=%s kind=%s worker=%s attempt=%s", job.incident_id, job.id,
                     job.kind, n, job.attempts)
            self.health.busy(name, f"job {job.id} of {job.incident_id}", JOB_TIMEOUT_S + 60)
            self.active_jobs[job.id] = job.incident_id
            try:
                async with asyncio.timeout(JOB_TIMEOUT_S):
                    await self.pipeline.run(job)
            except asyncio.CancelledError:
                raise  # shutdown: the job stays 'running' and is requeued at the next start
            except StoreUnavailable as e:  # not the job's fault: back to the queue, attempt refunded
                self._store_trouble(e, "job_interrupted", incident=job.incident_id, job=job.id)
                outcome: tuple[Any, ...] = (self.store.fail_job, f"store unavailable: {e}", True, CLAIM_RETRY_S, True)
            except Exception as e:  # the boundary of one job: whatever it was, log it and retry later
                log.exception("incident=%s event=job_failed job=%s attempt=%s", job.incident_id, job.id,
                              job.attempts)
                retry = not isinstance(e, LookupError)  # the incident is gone: nothing to retry
                what = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
                outcome = (self.store.fail_job, what[:2000], retry, job_backoff(job.attempts))
            else:
                outcome = (self.store.finish_job,)
            finally:
                self.active_jobs.pop(job.id, None)
            await self.settle(job, *outcome)

    def _store_trouble(self, e: StoreError, event: str, **context) -> None:
        log.warning("event=%s %s error=%s", event, " ".join(f"{k}={v}" for k, v in context.items()), e)

    async def settle(self, job, record, *args) -> None:
        """Record a job's outcome; while the store cannot be written, keep trying (the outcome
        must not be lost: a job left running would never run again in this process). If another
        replica took the job over (this one's lease lapsed), it is only logged."""
        delay = 0.5
        while True:
            try:
                kept = await asyncio.to_thread(record, job.id, *args)
                break
            except StoreUnavailable as e:
                self._store_trouble(e, "job_outcome_waiting", incident=job.incident_id, job=job.id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except StoreError as e:  # the job row is gone: nothing left to record
                log.warning("incident=%s event=job_outcome_not_stored job=%s error=%s", job.incident_id, job.id, e)
                return
        if kept is False:
            log.warning("incident=%s event=job_lease_lost job=%s", job.incident_id, job.id)
        elif record == self.store.fail_job and not (len(args) > 1 and args[1]):
            log.error("incident=%s event=job_dead job=%s error=%s", job.incident_id, job.id, args[0])

    async def keep_leases(self) -> None:
        """Renew the leases of the jobs this replica's workers hold, so that no other replica takes
        them over while they run (PostgreSQL; with SQLite a claim holds until restart)."""
        while True:
            self.health.progress("leases")
            await asyncio.sleep(min(self.store.lease_renew_s, 10.0))
            held = dict(self.active_jobs)
            if not held:
                continue
            try:
                kept = await asyncio.to_thread(self.store.renew_leases, held)
            except StoreError as e:
                self._store_trouble(e, "lease_renewal_failed", jobs=len(held))
                continue
            for job_id in held.keys() - kept:
                log.warning("incident=%s event=job_lease_lost job=%s", held[job_id], job_id)

    async def start(self) -> None:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="llmslo"))
        log.info("event=store_opened backend=%s owner=%s", self.store.backend, self.store.owner)
        requeued = await asyncio.to_thread(self.store.requeue_running)
        if requeued:
            log.info("event=jobs_requeued count=%s", requeued)
        await self.agent.start()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            f"worker-{n}": functools.partial(self.worker, n) for n in range(self.settings.workers)}
        loops["delivery"] = self.deliverer.run
        loops["leases"] = self.keep_leases
        loops["intake"] = self.intake.run
        probe = StoreProbe(self.health, self.store.heartbeat, (StoreError,))
        loops["store-probe"] = probe.run
        for name, body in loops.items():
            self.tasks.append(asyncio.create_task(supervise(self.health, name, body), name=name))
        if self.slack_app is not None:
            await self.slack_app.start()

    async def stop(self) -> None:
        if self.slack_app is not None:
            await self.slack_app.stop()
        await cancel_all(self.tasks)
        await self.agent.close()
        await self.traces.close()
        for s in self.sinks.values():
            await s.close()
        self.store.close()

    # --- operations the HTTP routes and the Slack app share -----------------------------------
    async def start_adhoc(self, req: adhoc.AdhocRequest) -> AcceptResult:
        """Store an ad hoc capture request as an incident and wake a worker; adhoc.Overloaded when too
        many incidents are waiting or the store cannot be written (nothing stored then)."""
        raw = req.notification(self.settings.base_url)
        try:
            result = await self.intake.accept(parse_notification(raw), raw)
        except Overloaded as e:
            raise adhoc.Overloaded("too many incidents waiting; retry later") from e
        except StoreUnavailable as e:
            raise adhoc.Overloaded("the incident store cannot be written right now; retry later") from e
        log.info("incident=%s event=adhoc_capture labels=%s by=%s", result.incident_id, req.labels,
                 req.requested_by)
        return result

    def app(self) -> web.Application:
        """The HTTP application serving this responder (``responder.http.api``)."""
        return Api(self).app()
