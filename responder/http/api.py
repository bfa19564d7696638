"""The responder's HTTP routes: intake, ad hoc captures, the read API, the incident page, health,
Slack's events and the OTLP receiver, each authenticated and validated before it touches the store.

Intake (``POST /webhook/alertmanager``): authenticate, bound the body, validate the v4 payload,
persist (the store dedups), answer 2xx, wake a worker. Nothing is done before the payload is
durable, and nothing is stored for a request that is refused.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from capture.client import LocalAgentClient
from capture.metrics import agent_registry
from capture.probes import CATALOG
from common.http import basic_ok, bearer_ok, guard, json_error, read_body, with_lifecycle
from responder.evidence.traces.receiver import OtlpReceiver
from responder.http.alertmanager import PayloadError, parse_notification
from responder.kube.cluster import KubeAgents
from responder.model import adhoc
from responder.render.page import render_incident_page
from responder.store.base import Overloaded, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from responder.app import Responder

log = logging.getLogger(__name__)


class Api:
    """The routes over one running :class:`~responder.app.Responder`."""

    def __init__(self, responder: Responder) -> None:
        self.r = responder
        self.settings = responder.settings
        agent = responder.agent.agent if isinstance(responder.agent, LocalAgentClient) else None
        self._agent_metrics = agent_registry(agent) if agent is not None else None

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        s = self.settings
        return bearer_ok(header, s.webhook_token) or basic_ok(header, s.webhook_user, s.webhook_password)

    def app(self) -> web.Application:
        """The aiohttp application: every route, the error guard, and the responder's start and
        stop tied to the application's lifecycle."""
        s = self.settings
        app = web.Application(client_max_size=max(s.max_body_bytes, s.otlp_max_body_bytes) + 1, middlewares=[guard])
        app.router.add_post("/webhook/alertmanager", self.webhook)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/incidents", self.list_incidents)
        app.router.add_get("/api/incidents/{id}", self.get_incident)
        app.router.add_post("/api/captures", self.adhoc_capture)
        app.router.add_post("/slack/events", self.slack_events)
        app.router.add_get("/incidents/{id}", self.incident_page)
        app.router.add_get("/metrics", self.metrics)
        receiver = OtlpReceiver(self.r.spans, self.authorized, s.otlp_max_body_bytes)
        app.router.add_post("/v1/traces", receiver.handle)
        app.router.add_get("/api/traces/{trace_id}", receiver.handle_trace)
        with_lifecycle(app, self.r.start, self.r.stop)
        return app

    async def webhook(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized: send the webhook bearer token or basic auth"},
                                     status=401, headers={"WWW-Authenticate": 'Bearer realm="llmslo"'})
        body = await read_body(request, self.settings.max_body_bytes,
                               advice="raise it (max_body_bytes, LLMSLO_MAX_BODY_BYTES), or set max_alerts in "
                                      "Alertmanager's webhook_config so one notification carries fewer alerts")
        try:
            notification = parse_notification(body)
        except PayloadError as e:
            return json_error(400, f"invalid Alertmanager payload: {e}")
        try:
            result = await self.r.intake.accept(notification, body)
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
            req = adhoc.parse_request(body, (p.name for p in self.r.pipeline.playbooks), CATALOG)
        except ValueError as e:
            return json_error(400, f"invalid capture request: {e}")
        try:
            result = await self.r.start_adhoc(req)
        except adhoc.Overloaded as e:
            return json_error(503, str(e), retry_after=5)
        return web.json_response({"status": "accepted", "incident_id": result.incident_id, "job_id": result.job_id},
                                 status=202)

    async def slack_events(self, request: web.Request) -> web.Response:
        """``POST /slack/events``: Slack's events, slash commands and interactivity (signed)."""
        if self.r.slack_app is None:
            return json_error(404, "Slack is not configured here: set LLMSLO_SLACK_BOT_TOKEN and "
                                   "LLMSLO_SLACK_SIGNING_SECRET")
        return await self.r.slack_app.handle(request)

    async def healthz(self, request: web.Request) -> web.Response:
        """Open: only ``ok`` (200) or ``unhealthy`` (503), from in-memory state, never waiting on
        the store (a liveness probe must not fail because a transaction is slow). With the
        webhook's credentials: why, each loop's last progress, the store, the span store, the
        agent and the Kubernetes informers."""
        r = self.r
        problems = r.health.problems()
        status = 200 if not problems else 503
        if not self.authorized(request):
            return web.json_response({"status": "ok" if not problems else "unhealthy"}, status=status)
        body = {"status": "ok" if not problems else "unhealthy", "problems": problems, **r.health.details(),
                "spans": r.spans.stats(),
                "intake": {"batches": r.intake.batches, "notifications": r.intake.notifications}}
        body["store"] |= {"backend": r.store.backend, "owner": r.store.owner}
        if r.health.store_up:
            try:
                body["counts"] = await asyncio.wait_for(asyncio.to_thread(r.store.counts), timeout=1.0)
            except (TimeoutError, StoreError) as e:
                body["counts"] = {"error": f"not read: {type(e).__name__}"}
        if isinstance(r.agent, KubeAgents):
            body["kubernetes"] = r.agent.cluster.stats()
        if isinstance(r.agent, LocalAgentClient):
            body["agent"] = r.agent.agent.status()
        return web.json_response(body, status=status)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition of the in-process agent (its flight recorder's counters, the kernel
        early warning, its cost): what ``llmslo agent`` serves on its own /metrics, so that the
        early-warning alert works when the responder runs the agent itself. 404 when the agents run
        elsewhere (scrape them)."""
        if not self.authorized(request):
            return json_error(401, "unauthorized")
        if self._agent_metrics is None:
            return json_error(404, "this responder runs no agent of its own: scrape the capture agents' /metrics")
        body = await asyncio.to_thread(generate_latest, self._agent_metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

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
        incidents = await asyncio.to_thread(self.r.store.list_incidents, limit, status)
        return web.json_response({"incidents": [i.to_dict() for i in incidents]})

    async def get_incident(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return json_error(401, "unauthorized")
        inc = await asyncio.to_thread(self.r.store.get_incident, request.match_info["id"])
        if inc is None:
            return json_error(404, f"no incident {request.match_info['id']!r}")
        return web.json_response(inc.to_dict())

    async def incident_page(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.Response(status=401, text="unauthorized", headers={"WWW-Authenticate": 'Basic realm="llmslo"'})
        inc = await asyncio.to_thread(self.r.store.get_incident, request.match_info["id"])
        if inc is None:
            return web.Response(status=404, text="no such incident")
        body = await asyncio.to_thread(render_incident_page, inc.to_dict())  # the chart renders off-loop
        return web.Response(text=body, content_type="text/html")
