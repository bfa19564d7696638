"""The agent's HTTP API over a real socket, through the same client the responder uses."""
from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from capture.agent import CaptureAgent
from capture.api import make_app
from capture.client import HttpAgentClient
from capture.schemas import CaptureRequest, CaptureTarget, RequestError

pytestmark = pytest.mark.kernel

TOKEN = "agent-secret"


@pytest.fixture
async def agent_http():
    server = TestServer(make_app(CaptureAgent(recorder=False), TOKEN), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    yield client
    await client.close()


async def test_token_required(agent_http):
    assert (await agent_http.get("/v1/probes")).status == 401
    r = await agent_http.get("/v1/probes", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401 and "token" in (await r.json())["error"]
    assert (await agent_http.get("/healthz")).status == 200


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b'{"probes": ["tcp_retrans"]}', "target: required"),
    (b'{"target": {"pids": [1]}, "probes": ["nope"]}', "unknown probe"),
    (b'{"target": {"pids": [1]}, "probes": ["tcp_retrans"], "duration_s": 999}', "duration_s"),
    (b'{"target": {"pids": ["x"]}, "probes": ["tcp_retrans"]}', "target.pids"),
    (b'{"target": {}, "probes": ["tcp_retrans"]}', "at least one"),
    (b'{"target": {"cgroups": ["/../etc"]}, "probes": ["tcp_retrans"]}', "not a cgroup path"),
    (b'{"target": {"cgroups": ["/nope-llmslo"]}, "probes": ["tcp_retrans"]}', "does not exist"),
    (b'{"target": {"pods": ["chat-7d9f"]}, "probes": ["tcp_retrans"]}', "is not a pod UID"),
    (b'{"target": {"containers": ["containerd://abc"]}, "probes": ["tcp_retrans"]}', "is not a container id"),
    (b'{"target": {"pods": ["00000000-0000-4000-8000-000000000000"]}, "probes": ["tcp_retrans"]}',
     "has no cgroup on this node"),
])
async def test_bad_requests_get_400_with_a_reason(agent_http, body, needle):
    r = await agent_http.post("/v1/captures", data=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 400
    assert needle in (await r.json())["error"]


async def test_capture_over_http_through_the_client(agent_http):
    client = HttpAgentClient(str(agent_http.make_url("")), TOKEN)
    try:
        names = [p.name for p in await client.probes()]
        assert {"tcp_retrans", "tcp_connect", "runq_latency"} <= set(names)
        result = await client.capture(CaptureRequest(target=CaptureTarget(pids=[1]), probes=["tcp_connect"],
                                                     duration_s=1, baseline_s=0))
        assert result.incident["tcp_connect"].error is None
        assert result.cost.bpf_run_count >= 0 and result.cost.startup_ms > 0
        with pytest.raises(RequestError):
            await client.capture(CaptureRequest(target=CaptureTarget(pids=[999999]), probes=["tcp_connect"],
                                                duration_s=1))
    finally:
        await client.close()
