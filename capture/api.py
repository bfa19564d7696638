"""The agent's HTTP API (``llmslo agent``), version 1, token-authenticated.

POST /v1/captures   run a capture (body: CaptureRequest), answer its CaptureResult
GET  /v1/recorder   the flight recorder: a window's per-probe results and per-interval counters
                    for a target (?cgroup=PATH&pid=N, repeatable; none: the whole node),
                    ?since=&until= (Unix seconds; default its whole history), ?probes=a,b
GET  /v1/early-warnings  the kernel early warning: per scored workload, the attribution model's
                    latest scores and its pending and firing domains
GET  /v1/probes     the probe catalog
GET  /metrics       Prometheus exposition: the recorder's per-cgroup counters and the agent's own
GET  /healthz       liveness (open); with the token, also the agent's state
The machine-readable description is capture/openapi.yaml (kept true by a test).
"""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from capture.agent import AgentBusy, CaptureAgent
from capture.metrics import agent_registry
from capture.schemas import RequestError
from common.http import JsonBodyError, bearer_ok, guard, json_error, load_json, read_body, with_lifecycle

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024


def make_app(agent: CaptureAgent, token: str) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path != "/healthz" and not bearer_ok(request.headers.get("Authorization"), token):
            return json_error(401, "missing or wrong bearer token (Authorization: Bearer <LLMSLO_AGENT_TOKEN>)")
        return await handler(request)

    async def captures(request: web.Request) -> web.Response:
        body = await read_body(request, MAX_REQUEST_BYTES)
        try:
            data = load_json(body)
        except JsonBodyError as e:
            return json_error(400, f"body is not valid JSON: {e}")
        try:
            req = agent.validate(data)
            result = await agent.capture(req)
        except RequestError as e:
            return json_error(400, str(e))
        except AgentBusy as e:
            return json_error(429, str(e), retry_after=5)
        return web.json_response(result.to_dict())

    async def recorder(request: web.Request) -> web.Response:
        try:
            query = agent.validate_recorder_query(request.query)
            data = await agent.recorder_window(query)
        except RequestError as e:
            return json_error(400, str(e))
        return web.json_response(data)

    async def early_warnings(request: web.Request) -> web.Response:
        try:
            return web.json_response(agent.early_warnings())
        except RequestError as e:
            return json_error(409, str(e))

    registry = agent_registry(agent)

    async def metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def probes(request: web.Request) -> web.Response:
        return web.json_response({"probes": [p.__dict__ for p in agent.probes()]})

    async def healthz(request: web.Request) -> web.Response:
        """Open: ok. With the token: the agent's state too (its recorder, captures, probes)."""
        if not bearer_ok(request.headers.get("Authorization"), token):
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "ok"} | agent.status())

    app = web.Application(middlewares=[guard, auth], client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post("/v1/captures", captures)
    app.router.add_get("/v1/probes", probes)
    app.router.add_get("/v1/recorder", recorder)
    app.router.add_get("/v1/early-warnings", early_warnings)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)

    with_lifecycle(app, agent.start, agent.stop)
    return app
