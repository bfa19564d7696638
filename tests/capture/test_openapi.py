"""capture/openapi.yaml is kept true: the running agent's routes are exactly the documented ones,
and every response it gives (success and error) validates against the documented schema."""
from __future__ import annotations

import os
from pathlib import Path

import jsonschema
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from capture.agent import CaptureAgent
from capture.api import make_app
from capture.schemas import CaptureRequest, CaptureTarget

pytestmark = pytest.mark.kernel

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "capture" / "openapi.yaml").read_text())
TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def schema_of(path: str, method: str, status: int) -> dict | None:
    resp = SPEC["paths"][path][method]["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    content = resp.get("content", {})
    media = content.get("application/json")
    return None if media is None else media["schema"]


def check(path: str, method: str, status: int, body) -> None:
    schema = schema_of(path, method, status)
    assert schema is not None, f"{method.upper()} {path} {status} is not documented as JSON"
    jsonschema.Draft202012Validator(dict(schema, components=SPEC["components"])).validate(body)


@pytest.fixture
async def client():
    agent = CaptureAgent(recorder=True, recorder_interval_s=1.0, recorder_history_s=60, preload=False)
    agent.recorder.probe_names = ["tcp_connect"]
    c = TestClient(TestServer(make_app(agent, TOKEN), host="127.0.0.1"))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


def test_every_route_is_documented_and_nothing_else():
    app = make_app(CaptureAgent(recorder=False, preload=False), TOKEN)
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
    assert served == documented


def test_the_request_schema_accepts_what_the_client_sends():
    req = CaptureRequest(target=CaptureTarget(pids=[1], ports=[443]), probes=["tcp_connect"], duration_s=5)
    jsonschema.Draft202012Validator(dict(SPEC["components"]["schemas"]["CaptureRequest"],
                                         components=SPEC["components"])).validate(req.to_dict())


async def test_responses_match_the_spec(client):
    r = await client.get("/healthz")
    assert await r.json() == {"status": "ok"}  # open: no node name, pid or state
    check("/healthz", "get", 200, await r.json())
    r = await client.get("/healthz", headers=AUTH)
    body = await r.json()
    assert {"node", "pid", "active_captures", "recorder"} <= set(body)
    check("/healthz", "get", 200, body)

    r = await client.get("/v1/probes", headers=AUTH)
    check("/v1/probes", "get", 200, await r.json())
    r = await client.get("/v1/probes")
    assert r.status == 401
    check("/v1/probes", "get", 401, await r.json())

    body = {"target": {"pids": [os.getpid()]}, "probes": ["tcp_connect", "runq_latency"],
            "duration_s": "1s", "baseline_s": 2}
    r = await client.post("/v1/captures", json=body, headers=AUTH)
    assert r.status == 200
    result = await r.json()
    check("/v1/captures", "post", 200, result)
    assert result["incident"]["runq_latency"]["histograms"]["runq_wait"]["unit"] == "us"
    r = await client.post("/v1/captures", json={"target": {}, "probes": []}, headers=AUTH)
    assert r.status == 400
    check("/v1/captures", "post", 400, await r.json())
    r = await client.post("/v1/captures", data=b"x" * (65 * 1024), headers=AUTH)
    assert r.status == 413
    check("/v1/captures", "post", 413, await r.json())

    r = await client.get("/v1/recorder", params={"pid": str(os.getpid())}, headers=AUTH)
    assert r.status == 200
    check("/v1/recorder", "get", 200, await r.json())
    r = await client.get("/v1/recorder", params={"until": "soon"}, headers=AUTH)
    assert r.status == 400
    check("/v1/recorder", "get", 400, await r.json())

    r = await client.get("/metrics", headers=AUTH)
    assert r.status == 200 and r.content_type == "text/plain"
    assert "llmslo_agent_captures_total 1.0" in await r.text()
