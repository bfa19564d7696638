"""End-to-end fixtures: a real ``llmslo serve`` process, a Slack Web API stand-in on a real
socket, and the lab service in its own cgroup with client traffic. Everything started here is
stopped here, and no nftables rule or cgroup outlives the module."""
from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass

import pytest_asyncio

from lab import cgroups, faults
from lab.harness import LabService, ResponderProcess
from lab.load import LoadStats, run_load
from tests.standins.slack import DEFAULT_TOKEN, SIGNING_SECRET, SlackStandin

HEALTHY_S = 15  # recorder history before the first fault
SERVICE = "e2e"


@dataclass
class Stack:
    responder: ResponderProcess
    slack: SlackStandin
    service: LabService
    load: LoadStats


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):
    cgroups.sweep_stale()
    faults.sweep_stale_tables()
    slack = SlackStandin()
    api = await slack.start()
    responder = ResponderProcess(tmp_path_factory.mktemp("responder"), token=secrets.token_urlsafe(16),
                                 extra_env={"LLMSLO_SLACK_BOT_TOKEN": DEFAULT_TOKEN, "LLMSLO_SLACK_API_URL": api,
                                            "LLMSLO_SLACK_CHANNEL": "#llm-incidents",
                                            "LLMSLO_SLACK_SIGNING_SECRET": SIGNING_SECRET,
                                            # the service below is a plain cgroup: score it for the early warning
                                            "LLMSLO_AGENT_EARLY_WARNING_CGROUPS":
                                                f"*/{cgroups.PREFIX}{SERVICE}-{os.getpid()}"})
    service = LabService(SERVICE)
    stop = asyncio.Event()
    stats = LoadStats()
    load = None
    try:
        responder.start()
        await responder.wait_ready()
        await service.start()
        load = asyncio.create_task(run_load(service.url, 20, stop, stats))
        await asyncio.sleep(HEALTHY_S)
        yield Stack(responder, slack, service, stats)
    finally:
        stop.set()
        if load:
            await asyncio.gather(load, return_exceptions=True)
        service.stop()
        responder.stop()
        await slack.stop()
        assert faults.lab_tables(os.getpid()) == []
