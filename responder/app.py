"""The responder's HTTP service: intake, the read API, the incident page, and its workers.

Intake (``POST /webhook/alertmanager``): authenticate, bound the body, validate the v4 payload,
persist (the store dedups), answer 2xx, wake a worker. Nothing is done before the payload is
durable, and nothing is stored for a request that is refused.
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
from common.http import basic_ok, bearer_ok, guard, json_error, read_body, with_lifecycle
from responder.config import ConfigError, Settings
from responder.delivery.outbox import Deliverer
from responder.delivery.sinks.base import ChatSink
from responder.delivery.sinks.console import ConsoleSink
from responder.delivery.sinks.slack import SlackSink
from responder.evidence.traces.backends import TraceBackend, backend_from_settings
from responder.evidence.traces.receiver import OtlpReceiver
from responder.evidence.traces.store import SpanStore
from responder.health import Health, StoreProbe, supervise
from responder.http.alertmanager import PayloadError, parse_notification
from responder.http.intake import IntakeWriter
from responder.kube.cluster import KubeAgents, KubeCluster
from responder.model import adhoc
from responder.pipeline import Pipeline
from responder.playbooks import PlaybookLoadError, load_playbooks
from responder.render.page import render_incident_page
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
                                                  kube=kube.from_env(settings.node_name)))
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
                try:
                    await asyncio.wait_for(self.wake_workers.wait(), timeout=2.0)
                except TimeoutError:
                    pass
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
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.agent.close()
        await self.traces.close()
        for s in self.sinks.values():
            await s.close()
        self.store.close()

    # --- auth -------------------------------------------------------------------------------
    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        s = self.settings
        return bearer_ok(header, s.webhook_token) or basic_ok(header, s.webhook_user, s.webhook_password)

    # --- handlers ---------------------------------------------------------------------------
    async def webhook(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized: send the webhook bearer token or basic auth"},
                                     status=401, headers={"WWW-Authenticate": 'Bearer realm="llmslo"'})
        limit = self.settings.max_body_bytes
        body = await read_body(request, limit, advice="raise it (max_body_bytes, LLMSLO_MAX_BODY_BYTES), or set "
                               "max_alerts in Alertmanager's webhook_config so one notification carries fewer alerts")
        try:
            notification = parse_notification(body)
        except PayloadError as e:
            return json_error(400, f"invalid Alertmanager payload: {e}")
        try:
            result = await self.intake.accept(notification, body)
        except (Overloaded, StoreUnavailable) as e:
            # Refused before anything was stored: Alertmanager retries a 5xx, so nothing is lost.
            why = "too many incidents waiting" if isinstance(e, Overloaded) else "the incident store cannot be written"
            return json_error(503, f"{why}; nothing was stored, retry later", retry_after=5)
        except (ValueError, TypeError, KeyError) as e:  # this notification alone could not be stored
            return json_error(400, f"the notification cannot be stored: {e}")
        # A line per notification that opened an incident or queued work; the rest of a storm
        # (repeats joining a waiting investigation) only at debug, so logging does not set its pace.
        log.log(logging.INFO if result.created or result.job_id else logging.DEBUG,
                "incident=%s event=alert_accepted group=%s new=%s duplicates=%s job=%s truncated=%s",
                result.incident_id, notification.group_key, result.new_alerts, result.duplicates, result.job_id,
                notification.truncated_alerts)
        return web.json_response({"status": "accepted", "incident_id": result.incident_id,
                                  "new_alerts": result.new_alerts, "duplicates": result.duplicates,
                                  "job_id": result.job_id})

    async def adhoc_capture(self, request: web.Request) -> web.Response:
        """``POST /api/captures``: run the investigate pipeline without an alert.

        Body ``{"labels": {...}, "reason": "...", "playbook": "name", "started_at": unix_s,
        "duration_s": 30, "probes": [...]}``, all but labels optional (``responder.model.adhoc``). The
        labels scope the capture as an alert's would; started_at is when the problem began, where
        the baselines end; duration and probes override the playbook's.
        """
        if not self.authorized(request):
            return json_error(401, "unauthorized")
        body = await read_body(request, adhoc.MAX_BODY_BYTES)
        try:
            req = adhoc.parse_request(body, (p.name for p in self.pipeline.playbooks), CATALOG)
        except ValueError as e:
            return json_error(400, f"invalid capture request: {e}")
        try:
            result = await self.start_adhoc(req)
        except adhoc.Overloaded as e:
            return json_error(503, str(e), retry_after=5)
        return web.json_response({"status": "accepted", "incident_id": result.incident_id, "job_id": result.job_id},
                                 status=202)

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

    async def slack_events(self, request: web.Request) -> web.Response:
        """``POST /slack/events``: Slack's events, slash commands and interactivity (signed)."""
        if self.slack_app is None:
            return json_error(404, "Slack is not configured here: set LLMSLO_SLACK_BOT_TOKEN and "
                                   "LLMSLO_SLACK_SIGNING_SECRET")
        return await self.slack_app.handle(request)

    async def healthz(self, request: web.Request) -> web.Response:
        """Open: only ``ok`` (200) or ``unhealthy`` (503), from in-memory state, never waiting on
        the store (a liveness probe must not fail because a transaction is slow). With the
        webhook's credentials: why, each loop's last progress, the store, the span store, the
        agent and the Kubernetes informers."""
        problems = self.health.problems()
        status = 200 if not problems else 503
        if not self.authorized(request):
            return web.json_response({"status": "ok" if not problems else "unhealthy"}, status=status)
        body = {"status": "ok" if not problems else "unhealthy", "problems": problems, **self.health.details(),
                "spans": self.spans.stats(),
                "intake": {"batches": self.intake.batches, "notifications": self.intake.notifications}}
        body["store"] |= {"backend": self.store.backend, "owner": self.store.owner}
        if self.health.store_up:
            try:
                body["counts"] = await asyncio.wait_for(asyncio.to_thread(self.store.counts), timeout=1.0)
            except (TimeoutError, StoreError) as e:
                body["counts"] = {"error": f"not read: {type(e).__name__}"}
        if isinstance(self.agent, KubeAgents):
            body["kubernetes"] = self.agent.cluster.stats()
        if isinstance(self.agent, LocalAgentClient):
            body["agent"] = self.agent.agent.status()
        return web.json_response(body, status=status)

    async def list_incidents(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return json_error(401, "unauthorized")
        status = request.query.get("status")
        if status not in (None, "firing", "resolved"):
            return json_error(400, "status: expected firing or resolved")
        try:
            limit = int(request.query.get("limit", "100"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return json_error(400, "limit: expected an integer from 1 to 1000")
        incidents = await asyncio.to_thread(self.store.list_incidents, limit, status)
        return web.json_response({"incidents": [i.to_dict() for i in incidents]})

    async def get_incident(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return json_error(401, "unauthorized")
        inc = await asyncio.to_thread(self.store.get_incident, request.match_info["id"])
        if inc is None:
            return json_error(404, f"no incident {request.match_info['id']!r}")
        return web.json_response(inc.to_dict())

    async def incident_page(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.Response(status=401, text="unauthorized", headers={"WWW-Authenticate": 'Basic realm="llmslo"'})
        inc = await asyncio.to_thread(self.store.get_incident, request.match_info["id"])
        if inc is None:
            return web.Response(status=404, text="no such incident")
        body = await asyncio.to_thread(render_incident_page, inc.to_dict())  # the chart renders off-loop
        return web.Response(text=body, content_type="text/html")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=max(self.settings.max_body_bytes, self.settings.otlp_max_body_bytes) + 1,
                              middlewares=[guard])
        app.router.add_post("/webhook/alertmanager", self.webhook)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/incidents", self.list_incidents)
        app.router.add_get("/api/incidents/{id}", self.get_incident)
        app.router.add_post("/api/captures", self.adhoc_capture)
        app.router.add_post("/slack/events", self.slack_events)
        app.router.add_get("/incidents/{id}", self.incident_page)
        receiver = OtlpReceiver(self.spans, self.authorized, self.settings.otlp_max_body_bytes)
        app.router.add_post("/v1/traces", receiver.handle)
        app.router.add_get("/api/traces/{trace_id}", receiver.handle_trace)

        with_lifecycle(app, self.start, self.stop)
        return app
