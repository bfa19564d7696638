"""The agent's API checks what is cheap before what is not, and refuses a client's mistake with a
4xx: a node already capturing refuses before resolving a target (resolving 64 ports scanned every
/proc/*/fd first, 13-25 s and 20 CPU-seconds for a 429), port resolution is bounded, NaN and
huge numbers are refused, a bearer value that is not UTF-8 is a 401, and only the token opens
/healthz's details."""
from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest
from aiohttp.test_utils import TestClient, TestServer

from capture import agent as agent_module
from capture import identity
from capture.agent import CaptureAgent
from capture.api import make_app
from capture.schemas import RequestError

TOKEN = "agent-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def agent():
    a = CaptureAgent(recorder=False, preload=False)
    client = TestClient(TestServer(make_app(a, TOKEN), host="127.0.0.1"))
    await client.start_server()
    yield a, client
    await client.close()


async def test_a_busy_node_refuses_before_resolving_the_target(agent, monkeypatch):
    a, client = agent
    resolved = []
    monkeypatch.setattr(agent_module.identity, "resolve", lambda target: resolved.append(target))
    for _ in range(a.max_concurrent):
        assert a._slots.acquire(blocking=False)
    try:
        body = {"target": {"ports": list(range(20000, 20064))}, "probes": ["tcp_retrans"], "duration_s": 1}
        answers = await asyncio.gather(*(client.post("/v1/captures", json=body, headers=AUTH) for _ in range(12)))
        assert {r.status for r in answers} == {429}
        assert all(r.headers["Retry-After"] == "5" for r in answers)
        assert resolved == []  # no /proc walk was spent on a request that could not run
    finally:
        for _ in range(a.max_concurrent):
            a._slots.release()


async def test_a_target_that_cannot_be_resolved_gives_its_slot_back(agent):
    a, client = agent
    body = {"target": {"pods": ["00000000-0000-0000-0000-000000000001"]}, "probes": ["tcp_retrans"],
            "duration_s": 1}
    for _ in range(a.max_concurrent + 1):
        r = await client.post("/v1/captures", json=body, headers=AUTH)
        assert r.status == 400
    assert a._slots.acquire(blocking=False)  # not leaked by the refusals
    a._slots.release()


def test_port_resolution_is_bounded_in_descriptors_read():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert identity.port_owners([port])[port] == {os.getpid()}
        with pytest.raises(RequestError, match="file descriptors"):
            identity.port_owners([port], max_files=0, deadline_s=0)  # the first process is all it reads


@pytest.mark.parametrize("body, needle", [
    (b'{"target": {"pids": [1]}, "probes": ["tcp_retrans"], "baseline_end": NaN}', "NaN"),
    (b'{"target": {"pids": [1]}, "probes": ["tcp_retrans"], "baseline_end": 1e999}', "baseline_end"),
    (b'{"target": {"pids": [1]}, "probes": ["tcp_retrans"], "duration_s": ' + b"9" * 400 + b"}", "duration_s"),
    (b'{"target": {"pids": [1]}, "probes": ["tcp_retrans"], "baseline_s": ' + b"9" * 5000 + b"}", "digits"),
    (b'{"target": ' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
    (b'{"target": {"cgroups": ["/a\\ud800"]}, "probes": ["tcp_retrans"]}', "surrogate"),
])
async def test_numbers_and_text_it_cannot_use_are_a_400(agent, body, needle):
    _, client = agent
    r = await client.post("/v1/captures", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert needle in (await r.json())["error"]


async def test_a_bearer_value_that_is_not_utf8_is_a_401(agent):
    _, client = agent
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"GET /v1/probes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def test_health_details_need_the_token(agent):
    _, client = agent
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    detail = await (await client.get("/healthz", headers=AUTH)).json()
    assert detail["pid"] == os.getpid() and "recorder" in detail
    assert json.dumps(detail)
