"""The responder's HTTP service: intake, the read API, the incident page, and its workers.

Intake (``POST /webhook/alertmanager``): authenticate, bound the body, validate the v4 payload,
persist (the store dedups), answer 2xx, wake a worker. Nothing is done before the payload is
durable, and nothing is stored for a request that is refused.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from capture import kube
from capture.agent import CaptureAgent
from capture.http_server import basic_ok, bearer_ok, json_error, read_body, with_lifecycle
from capture.client import HttpAgentClient, LocalAgentClient
from capture.probes import CATALOG
from responder import adhoc
from responder.alertmanager import PayloadError, parse_notification
from responder.config import ConfigError, Settings
from responder.delivery import Deliverer
from responder.kube import KubeAgents, KubeCluster
from responder.page import render_incident_page
from responder.pipeline import Pipeline
from responder.playbooks import load_playbooks
from responder.sinks.base import ChatSink
from responder.sinks.console import ConsoleSink
from responder.sinks.slack import SlackSink
from responder.store import AcceptResult, StoreBase, StoreError, open_store
from responder.traces.backends import TraceBackend, backend_from_settings
from responder.traces.receiver import OtlpReceiver
from responder.traces.store import SpanStore

log = logging.getLogger(__name__)



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
    wake_workers: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    active_jobs: dict[int, str] = field(default_factory=dict)  # job id -> incident id, while a worker runs it
    slack_app: Any = None  # responder.slack.app.SlackApp when Slack's bot token and signing secret are set

    @classmethod
    def build(cls, settings: Settings, console_stream=None) -> "Responder":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            store = open_store(settings.database_url, settings.store_path)
        except StoreError as e:
            raise ConfigError(f"{'database_url' if settings.database_url else 'data_dir'}: the incident store "
                              f"did not open: {e}") from None
        playbooks = load_playbooks(settings.playbooks_dir, set(CATALOG))
        cluster = None
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
        deliverer = Deliverer(store, sinks)
        # The built-in receiver always listens (an OTLP exporter can point here whatever back-end
        # the evidence is read from); it holds spans in memory only, bounded by the settings.
        spans = SpanStore(settings.span_store_max_spans, settings.span_store_max_bytes)
        traces = backend_from_settings(settings, spans)
        pipeline = Pipeline(store, playbooks, agent, list(sinks), settings, traces, on_enqueued=deliverer.notify,
                            kube=cluster)
        responder = cls(settings, store, agent, sinks, pipeline, deliverer, spans, traces)
        if settings.slack_bot_token and settings.slack_signing_secret:
            from responder.slack.app import SlackApp

            responder.slack_app = SlackApp(responder, settings)
        return responder

    # --- workers ----------------------------------------------------------------------------
    async def worker(self, n: int) -> None:
        while True:
            try:
                job = await asyncio.to_thread(self.store.claim_job)
            except StoreError as e:  # the database is away: keep the worker, try again shortly
                log.warning("event=job_claim_failed worker=%s error=%s", n, e)
                job = None
            if job is None:
                try:
                    await asyncio.wait_for(self.wake_workers.wait(), timeout=2.0)
                except asyncio.TimeoutError:
                    pass
                self.wake_workers.clear()
                continue
            log.info("incident=%s event=job_start job=%s kind=%s worker=%s attempt=%s", job.incident_id, job.id,
                     job.kind, n, job.attempts)
            self.active_jobs[job.id] = job.incident_id
            try:
                await self.pipeline.run(job)
            except asyncio.CancelledError:
                raise  # shutdown: the job stays 'running' and is requeued at the next start
            except Exception as e:
                log.exception("incident=%s event=job_failed job=%s", job.incident_id, job.id)
                await self.settle(job, self.store.fail_job, repr(e), True)
                continue
            else:
                await self.settle(job, self.store.finish_job)
            finally:
                self.active_jobs.pop(job.id, None)

    async def settle(self, job, record, *args) -> None:
        """Record a job's outcome. If the store is away, or another replica took the job over
        (this one's lease lapsed), it is only logged: the job's lease lapses and it runs again."""
        try:
            kept = await asyncio.to_thread(record, job.id, *args)
        except StoreError as e:
            log.warning("incident=%s event=job_outcome_not_stored job=%s error=%s", job.incident_id, job.id, e)
            return
        if kept is False:
            log.warning("incident=%s event=job_lease_lost job=%s", job.incident_id, job.id)

    async def keep_leases(self) -> None:
        """Renew the leases of the jobs this replica's workers hold, so that no other replica takes
        them over while they run (PostgreSQL; with SQLite a claim holds until restart)."""
        while True:
            await asyncio.sleep(self.store.lease_renew_s)
            held = dict(self.active_jobs)
            if not held:
                continue
            try:
                kept = await asyncio.to_thread(self.store.renew_leases, held)
            except StoreError as e:
                log.warning("event=lease_renewal_failed jobs=%s error=%s", len(held), e)
                continue
            for job_id in held.keys() - kept:
                log.warning("incident=%s event=job_lease_lost job=%s", held[job_id], job_id)

    async def start(self) -> None:
        log.info("event=store_opened backend=%s owner=%s", self.store.backend, self.store.owner)
        requeued = await asyncio.to_thread(self.store.requeue_running)
        if requeued:
            log.info("event=jobs_requeued count=%s", requeued)
        await self.agent.start()
        for n in range(self.settings.workers):
            self.tasks.append(asyncio.create_task(self.worker(n), name=f"worker-{n}"))
        self.tasks.append(asyncio.create_task(self.deliverer.run(), name="delivery"))
        self.tasks.append(asyncio.create_task(self.keep_leases(), name="leases"))
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
        if request.content_length is not None and request.content_length > limit:
            return json_error(413, f"body is {request.content_length} bytes; the limit is {limit} bytes")
        body = await read_body(request, limit)
        if body is None:
            return json_error(413, f"body is over the limit of {limit} bytes")
        try:
            notification = parse_notification(body)
        except PayloadError as e:
            return json_error(400, f"invalid Alertmanager payload: {e}")
        if await asyncio.to_thread(self.store.pending_jobs) >= self.settings.max_pending_jobs:
            # Refused before storing: Alertmanager retries 5xx, so nothing is lost.
            return json_error(503, "too many incidents waiting; retry later")
        result = await asyncio.to_thread(self.store.accept, notification, body)
        if result.job_id is not None:
            self.wake_workers.set()
        log.info("incident=%s event=alert_accepted group=%s new=%s duplicates=%s job=%s", result.incident_id,
                 notification.group_key, result.new_alerts, result.duplicates, result.job_id)
        return web.json_response({"status": "accepted", "incident_id": result.incident_id,
                                  "new_alerts": result.new_alerts, "duplicates": result.duplicates,
                                  "job_id": result.job_id})

    async def adhoc_capture(self, request: web.Request) -> web.Response:
        """``POST /api/captures``: run the investigate pipeline without an alert.

        Body ``{"labels": {...}, "reason": "...", "playbook": "name", "started_at": unix_s,
        "duration_s": 30, "probes": [...]}``, all but labels optional (``responder.adhoc``). The
        labels scope the capture as an alert's would; started_at is when the problem began, where
        the baselines end; duration and probes override the playbook's.
        """
        if not self.authorized(request):
            return json_error(401, "unauthorized")
        body = await read_body(request, adhoc.MAX_BODY_BYTES)
        if body is None:
            return json_error(413, f"body is over the limit of {adhoc.MAX_BODY_BYTES} bytes")
        try:
            req = adhoc.parse_request(body, (p.name for p in self.pipeline.playbooks), CATALOG)
        except ValueError as e:
            return json_error(400, f"invalid capture request: {e}")
        try:
            result = await self.start_adhoc(req)
        except adhoc.Overloaded as e:
            return json_error(503, str(e))
        return web.json_response({"status": "accepted", "incident_id": result.incident_id, "job_id": result.job_id},
                                 status=202)

    async def start_adhoc(self, req: adhoc.AdhocRequest) -> AcceptResult:
        """Store an ad hoc capture request as an incident and wake a worker; adhoc.Overloaded when too
        many incidents are waiting (nothing stored then)."""
        if await asyncio.to_thread(self.store.pending_jobs) >= self.settings.max_pending_jobs:
            raise adhoc.Overloaded("too many incidents waiting; retry later")
        raw = req.notification(self.settings.base_url)
        result = await asyncio.to_thread(self.store.accept, parse_notification(raw), raw)
        self.wake_workers.set()
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
        counts = await asyncio.to_thread(self.store.counts)
        body = {"status": "ok", "counts": counts, "spans": self.spans.stats(),
                "store": {"backend": self.store.backend, "owner": self.store.owner}}
        if isinstance(self.agent, KubeAgents):
            body["kubernetes"] = self.agent.cluster.stats()
        if isinstance(self.agent, LocalAgentClient):
            body["agent"] = self.agent.agent.status()
        return web.json_response(body)

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
        app = web.Application(client_max_size=max(self.settings.max_body_bytes, self.settings.otlp_max_body_bytes) + 1)
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
