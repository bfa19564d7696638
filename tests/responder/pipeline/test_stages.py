"""Each stage of the investigate pipeline alone, over one Context: a real SQLite store, the
shipped playbooks, and (for gather) an agent client of our own that answers in-process."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from capture.client import AgentError
from capture.schemas import CaptureRequest, CaptureResult, ProbeResult, RequestError
from lab.harness import alert_payload
from responder.http.alertmanager import parse_notification
from responder.model import adhoc
from responder.pipeline.attribute import Attribute
from responder.pipeline.gather import Gather
from responder.pipeline.playbook import SelectPlaybook
from responder.pipeline.preliminary import Preliminary
from responder.pipeline.report import OpenThread, Report
from responder.pipeline.scope import ScopeStage
from responder.pipeline.stage import Context, alert_labels
from responder.pipeline.thread import ThreadWriter

REPO = Path(__file__).resolve().parents[3]


def context(store, labels: dict[str, str], group: str | None = None) -> Context:
    raw = json.dumps(alert_payload("firing", labels, time.time() - 30,
                                   group_key=None if group is None else "{}:{group=\"" + group + "\"}")).encode()
    accepted = store.accept(parse_notification(raw), raw)
    job = store.claim_job()
    inc = store.get_incident(accepted.incident_id)
    return Context(job=job, incident=inc, labels=alert_labels(inc), options=adhoc.options(inc.alerts))


def with_duration(playbook, seconds: float):
    return dataclasses.replace(playbook, capture=dataclasses.replace(playbook.capture, duration_s=seconds))


async def test_playbook_stage_chooses_by_labels_and_records_it(world):
    settings, store, playbooks = world
    ctx = context(store, {"alertname": "LLMErrorBurn", "severity": "page", "pid": "1"})
    await SelectPlaybook(store, playbooks).run(ctx)
    assert ctx.playbook is not None and ctx.playbook.name == "llm-error-burn"
    assert store.get_incident(ctx.incident.id).playbook == "llm-error-burn"


async def test_open_thread_posts_the_root_to_the_routed_channel_of_every_sink(world):
    settings, store, playbooks = world
    ctx = context(store, {"alertname": "X", "pid": "1", "slack_channel": "#team"})
    await OpenThread(ThreadWriter(store, ["console", "slack"], settings)).run(ctx)
    pending = store.pending_messages()
    assert {(m.sink, m.step, m.body["op"], m.body["channel"]) for m in pending} == {
        ("console", "root", "root", "#team"), ("slack", "root", "root", "#team")}


async def test_open_thread_in_a_borrowed_thread_only_replies(world):
    settings, store, playbooks = world
    ctx = context(store, {"alertname": "X", "pid": "1"})
    ctx.borrowed = frozenset({"slack"})
    await OpenThread(ThreadWriter(store, ["console", "slack"], settings)).run(ctx)
    ops = {(m.sink, m.body["op"]) for m in store.pending_messages()}
    assert ops == {("console", "root"), ("console", "reply"), ("slack", "reply")}  # no root of its own there


@pytest.mark.parametrize("labels, pids, gap", [
    ({"alertname": "X", "pid": "4242"}, [4242], None),
    ({"alertname": "X"}, [], "no scope label on the alert"),
    ({"alertname": "X", "pid": "12ab"}, [], "is not a process id"),
    ({"alertname": "X", "namespace": "llm", "pod": "chat-0"}, [], "only Kubernetes resolves"),
])
async def test_scope_stage_makes_a_target_or_says_why_not(world, labels, pids, gap):
    settings, store, playbooks = world
    ctx = context(store, labels)
    ctx.playbook = next(p for p in playbooks if p.is_fallback)
    await ScopeStage().run(ctx)
    if gap is None:
        assert ctx.scope is not None and ctx.scope.target.pids == pids and not ctx.gaps
    else:
        assert ctx.scope is None and len(ctx.gaps) == 1 and gap in ctx.gaps[0], ctx.gaps


async def test_scope_stage_without_a_playbook_does_nothing(world):
    settings, store, playbooks = world
    ctx = context(store, {"alertname": "X", "pid": "1"})
    await ScopeStage().run(ctx)
    assert ctx.scope is None and not ctx.gaps


class Agent:
    """An agent client answering in-process: records the request, returns or raises."""

    def __init__(self, answer: CaptureResult | Exception) -> None:
        self.answer = answer
        self.requests: list[CaptureRequest] = []

    async def capture(self, req: CaptureRequest) -> CaptureResult:
        self.requests.append(req)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def result(target) -> CaptureResult:
    return CaptureResult(id="cap-1", node="n", target=target, started_at=1.0, ended_at=2.0,
                         incident={"tcp_retrans": ProbeResult("tcp_retrans", 1.0, counters={"retransmits": 5})})


async def scoped(world, labels=None):
    settings, store, playbooks = world
    ctx = context(store, labels or {"alertname": "X", "pid": "4242"})
    ctx.playbook = with_duration(next(p for p in playbooks if p.is_fallback), 1.0)
    await ScopeStage().run(ctx)
    return ctx


async def test_gather_asks_the_agent_for_the_playbooks_probes_over_the_scope(world):
    settings = world[0]
    ctx = await scoped(world)
    ctx.scope.notes.append("one pod left out")
    agent = Agent(result(ctx.scope.target))
    await Gather(agent, settings).run(ctx)
    [req] = agent.requests
    assert req.target.pids == [4242] and req.probes == list(ctx.playbook.capture.probes)
    assert req.duration_s == 1.0 and req.incident_id == ctx.incident.id
    assert req.baseline_end is not None and req.baseline_end <= time.time() - 29  # the alert's startsAt
    assert ctx.capture is not None and "one pod left out" in ctx.capture.errors and not ctx.gaps
    assert ctx.evidence == {"traces": None, "prometheus": None}  # no back-end, no queries


@pytest.mark.parametrize("failure, words", [
    (AgentError("the agent did not answer", "http://10.0.0.1:9443: ConnectionRefused"), "the capture failed: the agent"),
    (RequestError("duration_s: must be at most 300"), "could not scope the capture"),
    (ZeroDivisionError("bug"), "ZeroDivisionError; the responder's log has the details"),
])
async def test_gather_turns_a_failed_capture_into_a_gap_in_words(world, failure, words):
    ctx = await scoped(world)
    await Gather(Agent(failure), world[0]).run(ctx)
    assert ctx.capture is None and len(ctx.gaps) == 1 and words in ctx.gaps[0], ctx.gaps
    assert "10.0.0.1" not in ctx.gaps[0]  # the agent's address stays in the log


async def test_gather_without_a_scope_asks_no_agent(world):
    ctx = await scoped(world, {"alertname": "X"})
    agent = Agent(RuntimeError("must not be called"))
    await Gather(agent, world[0]).run(ctx)
    assert agent.requests == [] and ctx.capture is None and len(ctx.gaps) == 1  # the scope's gap


async def test_attribute_without_a_playbook_abstains_and_records_it(world):
    settings, store, playbooks = world
    ctx = context(store, {"alertname": "X"})
    await Attribute(store, settings).run(ctx)
    assert ctx.verdict is not None and ctx.verdict.domains == []
    assert ctx.verdict.abstain_reason == "no playbook matches the alert's labels"
    assert store.get_incident(ctx.incident.id).verdict["abstain_reason"] == ctx.verdict.abstain_reason


async def test_attribute_names_the_gaps_when_there_is_no_evidence(world):
    settings, store, playbooks = world
    ctx = context(store, {"alertname": "X"})
    ctx.playbook = playbooks[0]
    ctx.gaps.append("the capture failed: the agent did not answer")
    await Attribute(store, settings).run(ctx)
    assert ctx.verdict.domains == [] and "the agent did not answer" in ctx.verdict.abstain_reason
    stored = store.get_incident(ctx.incident.id)
    assert stored.attributed_at is not None and stored.evidence == {"prometheus": None, "traces": None}


async def test_report_updates_the_root_and_replies_once_per_job(world):
    settings, store, playbooks = world
    ctx = context(store, {"alertname": "X"})
    await Attribute(store, settings).run(ctx)
    await Report(ThreadWriter(store, ["console"], settings)).run(ctx)
    steps = [m.step for m in store.pending_messages()]
    assert steps == [f"root:attributed:{ctx.job.id}", f"attribution:{ctx.job.id}"]  # no evidence: no chart
    await Report(ThreadWriter(store, ["console"], settings)).run(ctx)  # a retried job
    assert [m.step for m in store.pending_messages()] == steps


def preliminary_stages(world, agent):
    settings, store, _ = world
    gather, attribute = Gather(agent, settings), Attribute(store, settings)
    thread = ThreadWriter(store, ["console"], settings)
    return Preliminary(gather, attribute, thread), gather, attribute, Report(thread)


async def test_preliminary_reads_the_recorder_at_once_and_the_report_edits_its_reply(world):
    settings, store, _ = world
    ctx = await scoped(world)
    agent = Agent(result(ctx.scope.target))
    preliminary, gather, attribute, report = preliminary_stages(world, agent)
    await preliminary.run(ctx)
    [req] = agent.requests
    assert req.source == "recorder" and req.baseline_end is not None and req.baseline_end <= time.time() - 29
    stored = store.get_incident(ctx.incident.id)
    assert stored.preliminary["job"] == ctx.job.id and stored.preliminary["window"][0] == req.baseline_end
    assert stored.preliminary["received_at"] == ctx.job.created_at <= stored.preliminary["first_at"]
    assert stored.verdict is None and stored.attributed_at is None  # the verdict stays the capture's
    job = ctx.job.id
    msgs = store.pending_messages()
    assert [(m.step, m.body["op"]) for m in msgs] == [(f"root:preliminary:{job}", "update"),
                                                      (f"attribution:{job}", "reply")]
    assert "preliminary: " in msgs[0].body["message"]["text"] and "confirming" in msgs[0].body["message"]["text"]
    assert msgs[1].body["message"]["text"].startswith("Preliminary · ")
    assert "1s capture is running" in msgs[1].body["message"]["text"]

    for stage in (gather, attribute, report):
        await stage.run(ctx)
    live = agent.requests[1]
    assert live.source == "live" and live.baseline_end == req.baseline_end
    [final] = [m for m in store.pending_messages() if m.step == f"attribution:{job}:final"]
    assert final.body["op"] == "edit" and final.body["of"] == f"attribution:{job}"
    assert "Confirmed by the 1s capture" in final.body["message"]["text"]
    assert not final.body["message"]["text"].startswith("Preliminary")


async def test_a_restarted_job_keeps_the_preliminary_verdict_it_posted(world):
    settings, store, _ = world
    ctx = await scoped(world)
    agent = Agent(result(ctx.scope.target))
    preliminary = preliminary_stages(world, agent)[0]
    await preliminary.run(ctx)
    again = Context(job=ctx.job, incident=store.get_incident(ctx.incident.id), labels=ctx.labels, options=ctx.options)
    again.playbook, again.scope = ctx.playbook, ctx.scope
    await preliminary.run(again)
    assert len(agent.requests) == 1 and again.preliminary == ctx.preliminary and again.onset == ctx.onset
    assert len(store.pending_messages()) == 2


async def test_no_preliminary_verdict_when_switched_off_or_asked_for_by_a_person(world):
    settings, store, _ = world
    ctx = await scoped(world)
    agent = Agent(result(ctx.scope.target))
    stage = preliminary_stages(world, agent)[0]
    stage.enabled = False
    await stage.run(ctx)
    stage.enabled = True
    ctx.incident = dataclasses.replace(ctx.incident, group_key=adhoc.ADHOC_GROUP_PREFIX + "x")
    await stage.run(ctx)
    assert agent.requests == [] and ctx.preliminary is None and store.pending_messages() == []


@pytest.mark.parametrize("began_at, expected_lead_s", [
    ("1796452370.5", 30.0),  # the agent saw the trouble 30 s before Prometheus did
    ("1796452410", 0.0),  # after startsAt: ignored
    ("1796448000", 0.0),  # over an hour before: ignored
    ("soon", 0.0),
    (None, 0.0),
])
def test_an_alerts_began_at_moves_its_start_back_within_bounds(began_at, expected_lead_s):
    from responder.pipeline.gather import alert_began
    alert = {"startsAt": "2026-12-05T06:33:20.500Z", "annotations": {} if began_at is None else {"began_at": began_at}}
    assert alert_began(alert) == 1796452400.5 - expected_lead_s
