"""Stage join: an SLO page for a workload that a kernel early warning already investigates joins
it, in the early warning's thread when it posted one (quiet) or with its verdict as the page's
first reply when it waited; pages for other workloads, and early warnings too old or resolved,
are left alone. A real SQLite store and the shipped playbooks."""
from __future__ import annotations

import dataclasses

from responder.pipeline.join import JOIN_WINDOW_S, JoinEarlyWarning
from responder.pipeline.playbook import SelectPlaybook
from responder.pipeline.report import OpenThread
from responder.pipeline.scope import ScopeStage
from responder.pipeline.thread import ThreadWriter
from responder.playbooks import NOTIFY_WAIT
from tests.responder.pipeline.test_stages import context

CGROUP = "/llmslo-lab-svc-1"
EARLY = {"alertname": "LLMKernelEarlyWarning", "severity": "ticket", "early_warning": "kernel", "domain": "network",
         "signal": "tcp_retrans.retransmits_per_s", "cgroup": CGROUP, "slack_mention": "S0ONCALL"}
PAGE = {"alertname": "LLMTTFTBurn", "severity": "page", "slo": "ttft", "cgroup": CGROUP, "slack_mention": "S0ONCALL"}
VERDICT = {"domains": ["network"], "confidence": 0.82, "hypotheses": [], "abstain_reason": None}


async def investigated(store, playbooks, labels: dict, group: str, writer: ThreadWriter):
    """The incident of an alert with ``labels`` through playbook, scope, join and open-thread."""
    ctx = context(store, labels, group)
    await SelectPlaybook(store, playbooks).run(ctx)
    await ScopeStage().run(ctx)
    await JoinEarlyWarning(store, writer, playbooks).run(ctx)
    await OpenThread(writer).run(ctx)
    return ctx


def writer_for(world, playbooks=None) -> ThreadWriter:
    settings, store, shipped = world
    return ThreadWriter(store, ["console", "slack"], dataclasses.replace(settings, slack_mention_label="slack_mention"),
                        playbooks=playbooks or shipped)


async def test_a_page_joins_the_quiet_early_warnings_thread(world):
    settings, store, playbooks = world
    writer = writer_for(world)
    early = await investigated(store, playbooks, EARLY, "early", writer)
    assert early.playbook.name == "kernel-early-warning"
    [root] = [m for m in store.pending_messages() if m.sink == "slack" and m.step == "root"]
    assert "S0ONCALL" not in root.body["message"]["text"]  # quiet: nobody is mentioned
    store.update_incident(early.incident.id, verdict=VERDICT,
                          thread={"slack": {"channel": "#llm-incidents", "ts": "1700000000.000100"}})
    before = {m.id for m in store.pending_messages()}

    page = await investigated(store, playbooks, PAGE, "page", writer)
    assert page.borrowed == frozenset({"slack"})
    stored = store.get_incident(page.incident.id)
    assert stored.thread["slack"] == {"channel": "#llm-incidents", "ts": "1700000000.000100",
                                      "borrowed_from": early.incident.id}
    info = stored.evidence["early_warning"]
    assert info["incident"] == early.incident.id and info["joined"] == "thread" and info["lead_s"] >= 0
    assert info["verdict"]["domains"] == ["network"]
    new = [m for m in store.pending_messages() if m.id not in before]
    assert {(m.sink, m.body["op"], m.step) for m in new} == {("console", "root", "root"), ("console", "reply", "joined"),
                                                            ("slack", "reply", "joined")}
    [joined] = [m for m in new if m.sink == "slack"]
    text = joined.body["message"]["text"]
    assert text.startswith("<!subteam^S0ONCALL>") and "LLMTTFTBurn is paging for this workload" in text, text
    # Its own root updates (acknowledged, resolved) stay out of the early warning's thread.
    assert writer.borrowed(stored) == frozenset({"slack"})


async def test_a_page_after_a_waiting_early_warning_opens_its_thread_with_that_verdict(world):
    settings, store, playbooks = world
    waiting = [dataclasses.replace(p, notify=NOTIFY_WAIT) if p.name == "kernel-early-warning" else p for p in playbooks]
    writer = writer_for(world, waiting)
    early = await investigated(store, waiting, EARLY, "early", writer)
    assert store.pending_messages() == []  # waiting: nothing posted
    store.update_incident(early.incident.id, verdict=VERDICT)

    page = await investigated(store, waiting, PAGE, "page", writer)
    assert page.borrowed == frozenset()
    steps = [(m.sink, m.step) for m in store.pending_messages()]
    assert steps == [("console", "root"), ("slack", "root"), ("console", "joined"), ("slack", "joined")]
    text = [m for m in store.pending_messages() if m.sink == "slack"][1].body["message"]["text"]
    assert text.startswith("Early warning before this page: LLMKernelEarlyWarning since "), text
    assert ": network score 0.82 · incident" in text, text


async def test_pages_for_other_workloads_and_stale_or_resolved_warnings_join_nothing(world):
    settings, store, playbooks = world
    writer = writer_for(world)
    early = await investigated(store, playbooks, EARLY, "early", writer)
    store.update_incident(early.incident.id, thread={"slack": {"channel": "#c", "ts": "1.1"}})
    other = await investigated(store, playbooks, PAGE | {"cgroup": "/another"}, "other", writer)
    assert "early_warning" not in store.get_incident(other.incident.id).evidence and not other.borrowed

    store.update_incident(early.incident.id, status="resolved")
    late = await investigated(store, playbooks, PAGE, "after-resolved", writer)
    assert "early_warning" not in store.get_incident(late.incident.id).evidence

    store.update_incident(early.incident.id, status="firing")
    with store._tx() as conn:  # the early warning began before the join window
        conn.execute("UPDATE incidents SET created_at=created_at-? WHERE id=?", (JOIN_WINDOW_S + 60, early.incident.id))
    stale = await investigated(store, playbooks, PAGE, "stale", writer)
    assert "early_warning" not in store.get_incident(stale.incident.id).evidence
