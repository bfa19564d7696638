"""The real alerting path, end to end, on loopback:

    instrumented service --/metrics--> prometheus (rules from `llmslo rules generate`, scaled)
        --alerts--> prometheus-alertmanager --webhook (bearer)--> llmslo serve
    instrumented service --OTLP/HTTP spans (opentelemetry-sdk exporter)--> llmslo serve

The service calls an OpenAI-shaped provider stand-in; after a healthy phase the provider answers
429 to a share of calls. Prometheus records the error burn, the page alert fires, Alertmanager
delivers it, and the responder opens an incident whose report carries Prometheus and trace
evidence with links that answer. When the provider recovers, the alert resolves the incident.
Every server here is started and stopped by this test.
"""
from __future__ import annotations

import asyncio
import random
import secrets
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from lab import cgroups
from lab.harness import REPO, LabService, ResponderProcess
from tests.responder.prom_fixtures import start_alertmanager, start_prometheus
from tests.standins.loopback import LoopbackServer

pytestmark = pytest.mark.e2e

SCALE = "1/60"  # 5m -> 5 s, 1h -> 60 s: the page alert can fire within half a minute
HEALTHY_S = 45
THROTTLED_SHARE = 0.4
LOAD_RPS = 20


class Provider(LoopbackServer):
    """An OpenAI-shaped chat endpoint that answers 429 to a share of calls when told to."""

    def __init__(self) -> None:
        self.throttle = 0.0
        self.calls = self.throttled = 0
        self.rng = random.Random(7)

    async def completions(self, request: web.Request) -> web.Response:
        self.calls += 1
        await asyncio.sleep(0.02)
        if self.rng.random() < self.throttle:
            self.throttled += 1
            return web.json_response({"error": {"type": "rate_limit_exceeded", "message": "slow down"}}, status=429,
                                     headers={"retry-after": "1", "x-ratelimit-remaining-requests": "0"})
        return web.json_response({"id": "c1", "model": "gpt-4o-mini-2024-07-18", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        return app


async def load(url: str, stop: asyncio.Event, codes: dict[int, int]) -> None:
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async def one() -> None:
                try:
                    async with s.post(url, json={"prompt": "hi"}) as r:
                        codes[r.status] = codes.get(r.status, 0) + 1
                except aiohttp.ClientError:
                    codes[0] = codes.get(0, 0) + 1
            asyncio.ensure_future(one())
            await asyncio.sleep(1 / LOAD_RPS)


async def wait_until(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


async def test_real_burn_alert_becomes_an_incident_with_evidence(tmp_path: Path) -> None:
    cgroups.sweep_stale()
    token = secrets.token_urlsafe(16)
    provider = Provider()
    provider_url = await provider.start()
    responder = ResponderProcess(tmp_path / "responder", token=token)
    responder.env["LLMSLO_PUBLIC_URL"] = responder.url
    service = LabService("alertpath", module="tests.e2e.sli_service", ready_path="/metrics",
                         log_path=tmp_path / "service.log",
                         args=("--provider", provider_url, "--otlp", f"{responder.url}/v1/traces", "--token", token,
                               "--service", "chat-api"))
    prom = am = None
    stop = asyncio.Event()
    codes: dict[int, int] = {}
    loader = None
    try:
        # Rules exactly as a user would make them: the CLI, scaled for a test's minutes. The
        # scrape target carries the service's cgroup, kept by the rules' grouping, so the alert
        # names the workload the agent captures.
        rules = subprocess.run([sys.executable, "-m", "responder.cli", "rules", "generate", "--window-scale", SCALE,
                                "--scrape-interval", "1s", "--evaluation-interval", "1s", "--group-by", "cgroup"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout
        await service.start()
        am = start_alertmanager(tmp_path, yaml.safe_dump({
            "route": {"receiver": "llmslo", "group_by": ["alertname", "service"], "group_wait": "1s",
                      "group_interval": "5s", "repeat_interval": "1h"},
            "receivers": [{"name": "llmslo", "webhook_configs": [{
                "url": f"{responder.url}/webhook/alertmanager", "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials": token}}}]}]}))
        prom = start_prometheus(tmp_path, yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.url.split("//", 1)[1]]}]}]},
            "scrape_configs": [{"job_name": "chat-api", "static_configs": [{
                "targets": [f"127.0.0.1:{service.port}"],
                "labels": {"service": "chat-api", "cgroup": service.cgroup.path}}]}]}),
            {"llm-slo.yml": rules}, extra_args=["--rules.alert.resend-delay=1s"])
        responder.env["LLMSLO_PROMETHEUS_URL"] = prom.url
        responder.start()
        await responder.wait_ready()
        loader = asyncio.create_task(load(f"http://127.0.0.1:{service.port}/v1/chat", stop, codes))
        await asyncio.sleep(HEALTHY_S)
        assert prom.alerts() == [], "no alert while the service is healthy"

        provider.throttle = THROTTLED_SHARE
        fault_at = time.time()
        async with aiohttp.ClientSession(headers=responder.headers()) as http:
            async def incidents():
                async with http.get(f"{responder.url}/api/incidents") as r:
                    return (await r.json())["incidents"]

            async def attributed():
                found = [i for i in await incidents() if i.get("verdict")]
                return found[0] if found else None

            inc = await wait_until(attributed, 120, "an attributed incident from the real alert")
            alert = inc["alerts"][0]
            assert alert["labels"]["alertname"] == "LLMErrorBurn"
            assert alert["labels"]["severity"] == "page"
            assert alert["labels"]["cgroup"] == service.cgroup.path
            assert inc["playbook"] == "llm-error-burn"

            # Prometheus evidence: the burn over the alert's windows, higher in the incident.
            pe = inc["evidence"]["prometheus"]
            assert pe["reachable"], pe
            burns = [q for q in pe["queries"] if q["kind"] == "burn_rate" and not q.get("error")]
            assert burns, pe["queries"]
            assert max(q["incident"]["max"] for q in burns) >= 14.4
            assert all(q["incident"]["mean"] > (q["baseline"]["mean"] or 0) for q in burns)

            # Trace evidence from the SDK's spans: the provider dependency and its 429s.
            te = inc["evidence"]["traces"]
            assert te["reachable"] and te["service"] == "chat-api", te
            llm = next(d for d in te["dependencies"] if d["kind"] == "llm")
            assert llm["name"] == "openai"
            assert llm["baseline"]["count"] > 100 and llm["incident"]["error_types"].get("429", 0) > 10
            assert te["exemplars"] and all(e["url"] for e in te["exemplars"])
            # The baselines end where the burn began (read from the burn-rate series), not at the
            # alert's startsAt, which comes only once the burn has lasted a while.
            starts_at = datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp()
            onset = te["baseline"]["end"]
            assert fault_at - 5 <= onset <= fault_at + 8 and onset < starts_at, (fault_at, onset, starts_at)

            # Every link answers: the alert's generatorURL and graphs on the real Prometheus,
            # the exemplar traces and the page on the responder.
            kinds = {link["kind"] for link in inc["links"]}
            assert {"alert", "prometheus", "trace", "incident", "runbook"} <= kinds, inc["links"]
            for link in inc["links"]:
                if link["kind"] == "runbook":
                    continue  # external documentation, not reachable from here
                async with http.get(link["url"]) as r:
                    assert r.status == 200, link
                    body = await r.text()
                if link["kind"] == "trace":
                    assert '"spans"' in body
                if link["kind"] == "incident":
                    assert "LLMErrorBurn" in body and "<figure id=chart>" in body and "<svg" in body
            assert any(link["url"].startswith(prom.url) for link in inc["links"] if link["kind"] == "alert")

            # The verdict: the provider throttles (seen in the traces), and the capture's scope
            # was the service's cgroup from the alert's labels.
            assert inc["capture"] and inc["capture"]["target"]["cgroups"] == [service.cgroup.path]
            assert inc["verdict"]["domains"] == ["provider_throttling"], inc["verdict"]

            # Recovery: the burn stops, Prometheus resolves the alert, Alertmanager says so.
            provider.throttle = 0.0

            async def resolved():
                async with http.get(f"{responder.url}/api/incidents/{inc['id']}") as r:
                    return (await r.json())["status"] == "resolved"

            await wait_until(resolved, 150, "the incident resolved after the provider recovered")
        assert codes.get(200, 0) > 500 and codes.get(429, 0) > 50, codes
    finally:
        stop.set()
        if loader:
            await asyncio.gather(loader, return_exceptions=True)
        for server in (prom, am):
            if server:
                server.stop()
        service.stop()
        responder.stop()
        await provider.stop()
