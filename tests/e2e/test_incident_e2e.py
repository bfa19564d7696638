"""One real incident end to end, three times: an Alertmanager v4 payload over HTTP to a running
``llmslo serve``, a real fault in the kernel, a real scoped capture, and a Slack thread (on the
stand-in) whose verdict names the injected fault's domain, or abstains when there is none."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from lab import faults
from lab.harness import alert_payload

pytestmark = [pytest.mark.e2e, pytest.mark.kernel, pytest.mark.asyncio(loop_scope="module")]

SETTLE_S = 3


async def fire(stack, name: str, fault) -> tuple[dict, dict, float]:
    """The alert sent during ``fault``: the incident, its Slack thread once the capture's verdict
    is in it, and when (monotonic) the alert was sent."""
    labels = {"alertname": "LLMTTFTBurn", "severity": "page", "slo": "ttft", "scenario_run": name,
              "cgroup": stack.service.cgroup.path}
    group = '{}:{alertname="LLMTTFTBurn", scenario_run="' + name + '"}'
    with fault:
        t0 = time.time()
        await asyncio.sleep(SETTLE_S)
        sent = time.monotonic()
        status, body = await stack.responder.post_alert(alert_payload("firing", labels, t0, group_key=group))
        assert status == 200, body
        incident = await stack.responder.wait_verdict(body["incident_id"])
    # The thread on Slack: wait for the capture's attribution (the preliminary reply, edited) to be delivered.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        inc = await stack.responder.incident(incident["id"])
        ref = (inc.get("thread") or {}).get("slack")
        replies = stack.slack.threads()[ref["ts"]]["replies"] if ref and ref["ts"] in stack.slack.threads() else []
        if replies and not any(r["text"].startswith("Preliminary") for r in replies):
            return inc, stack.slack.threads()[ref["ts"]], sent
        await asyncio.sleep(0.3)
    raise AssertionError("the Slack thread never got its attribution reply")


def thread_text(thread: dict) -> str:
    return "\n".join([thread["root"]["text"]] + [r["text"] for r in thread["replies"]])


async def test_no_fault_abstains(stack):
    inc, thread, _ = await fire(stack, "calm", faults.CpuContention(stack.service.cgroup, 0))
    assert inc["verdict"]["domains"] == []
    assert inc["verdict"]["abstain_reason"]
    assert "abstain" in thread_text(thread).lower()


async def test_packet_loss_is_attributed_to_network_at_once_then_confirmed(stack):
    """At the alert's receipt the responder attributes from the agent's flight recorder (the
    burn so far), traces and Prometheus, and posts that verdict marked preliminary within 2 s of
    the alert being sent; the capture's verdict then replaces the same reply (confirmed), never
    a second verdict reply."""
    inc, thread, sent = await fire(stack, "loss", faults.PacketLoss(stack.service.port, 20))
    v = inc["verdict"]
    assert v["domains"][0] == "network", v
    assert v["hypotheses"][0]["supporting"], v
    text = thread_text(thread)
    assert "network" in thread["root"]["text"]
    assert "retransmit" in text.lower()
    assert "runbooks.example.com" in text  # the playbook's runbook links
    assert "BPF" in text  # what the capture cost

    root_ts = inc["thread"]["slack"]["ts"]
    [first] = [c for c in stack.slack.calls_to("chat.postMessage") if c["body"].get("thread_ts") == root_ts
               and str(c["body"].get("text", "")).startswith("Preliminary")]
    took = first["at"] - sent
    assert took < 2.0, f"the preliminary verdict was posted {took:.2f} s after the alert was sent"
    assert first["body"]["text"].startswith("Preliminary · LLMTTFTBurn: network"), first["body"]["text"][:300]
    reply_ts = first["response"]["ts"]
    edits = [c for c in stack.slack.calls_to("chat.update") if c["body"].get("ts") == reply_ts and c["status"] == 200]
    assert len(edits) == 1 and edits[0]["at"] > first["at"]
    assert edits[0]["body"]["text"].startswith("LLMTTFTBurn: network")
    assert "Confirmed by the" in edits[0]["body"]["text"], edits[0]["body"]["text"][:400]
    verdicts = [r for r in thread["replies"] if r["text"].startswith("LLMTTFTBurn")]
    assert [r["ts"] for r in verdicts] == [reply_ts]
    assert inc["preliminary"]["verdict"]["domains"][:1] == ["network"] and inc["preliminary"]["took_s"] < 2.0
    print(f"preliminary verdict posted {took:.3f} s after the alert was sent (attributed in "
          f"{inc['preliminary']['took_s']:.3f} s); the capture's verdict {edits[0]['at'] - sent:.1f} s after")


async def test_cpu_contention_is_attributed_to_app_cpu(stack):
    await asyncio.sleep(10)  # healthy again after the loss round
    inc, thread, _ = await fire(stack, "cpu", faults.CpuContention(stack.service.cgroup, 4))
    v = inc["verdict"]
    assert v["domains"][:1] == ["app_cpu"], v
    assert "app_cpu" in thread["root"]["text"]


async def test_repeat_and_resolve_update_the_same_thread(stack):
    """Alertmanager re-sends the same firing alert (repeat_interval): no second capture, no new
    thread; the resolved notification updates the root and replies in the same thread."""
    labels = {"alertname": "LLMTTFTBurn", "severity": "page", "scenario_run": "repeat",
              "cgroup": stack.service.cgroup.path}
    group = '{}:{alertname="LLMTTFTBurn", scenario_run="repeat"}'
    t0 = time.time()
    payload = alert_payload("firing", labels, t0, group_key=group)
    _, first = await stack.responder.post_alert(payload)
    inc = await stack.responder.wait_verdict(first["incident_id"])
    roots_before = len(stack.slack.threads())
    status, again = await stack.responder.post_alert(payload)
    assert status == 200 and again["duplicates"] == 1 and again["job_id"] is None
    status, resolved = await stack.responder.post_alert(
        alert_payload("resolved", labels, t0, ends_at=time.time(), group_key=group))
    assert status == 200 and resolved["job_id"] is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cur = await stack.responder.incident(inc["id"])
        ts = (cur.get("thread") or {}).get("slack", {}).get("ts")
        thread = stack.slack.threads().get(ts)
        if cur["status"] == "resolved" and thread and any("Resolved" in r["text"] for r in thread["replies"]):
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError("resolve never reached the thread")
    assert len(stack.slack.threads()) == roots_before  # no new root message
    assert "RESOLVED" in thread["root"]["text"].upper()
    verdicts = [c for c in stack.slack.calls_to("chat.postMessage")
                if c["body"].get("thread_ts") == ts and str(c["body"].get("text")).startswith(("Preliminary", "LLM"))]
    assert len(verdicts) == 1  # one attribution reply (posted preliminary, edited with the capture's)
    assert sum("Kernel capture" in r["text"] for r in thread["replies"]) == 1


async def firing_warnings(stack) -> list[dict]:
    """The in-process agent's kernel early warnings firing now for the service (detailed /healthz)."""
    body = await stack.responder.health()
    firing = ((body.get("agent") or {}).get("early_warning") or {}).get("firing_now") or []
    return [w for w in firing if w["workload"] == f"cgroup:{stack.service.cgroup.path}"]


async def test_the_kernel_early_warning_opens_a_quiet_thread_that_the_page_joins(stack):
    """Loss on the service's port: the agent's early warning fires on its recorder alone (no
    alert yet); sent as the generated rule labels it, it opens a quiet incident whose capture names
    network; the SLO page that follows answers in that thread, not a new one."""
    await asyncio.sleep(10)  # healthy again after the previous rounds
    # a baseline for the capture the early warning's alert starts (60 s before the trouble began),
    # also when this test runs alone on a fresh stack
    deadline = time.monotonic() + 120
    while ((await stack.responder.health()).get("agent") or {}).get("recorder", {}).get("covers_s", 0) < 80:
        assert time.monotonic() < deadline, "the recorder never covered 80 s"
        await asyncio.sleep(2)
    deadline = time.monotonic() + 60
    while await firing_warnings(stack):  # an earlier round's warning clears first
        assert time.monotonic() < deadline, "an earlier early warning never cleared"
        await asyncio.sleep(1)
    # the earlier loss round out of the capture's 60 s baseline before this round's trouble
    await asyncio.sleep(45)
    with faults.PacketLoss(stack.service.port, 20):
        t0 = time.monotonic()
        while not (warnings := await firing_warnings(stack)):
            assert time.monotonic() - t0 < 60, "no early warning a minute into 20% loss"
            await asyncio.sleep(0.5)
        warned_s = time.monotonic() - t0
        [w] = warnings
        assert w["domain"] == "network", w
        # what Prometheus scrapes from the responder's own agent, and the generated alert is built on
        async with aiohttp.ClientSession(headers=stack.responder.headers()) as s:
            async with s.get(stack.responder.url + "/metrics") as r:
                assert r.status == 200
                text = await r.text()
        [series] = [ln for ln in text.splitlines() if ln.startswith("llmslo_early_warning_began_at_seconds{")]
        assert 'domain="network"' in series and f'cgroup="{stack.service.cgroup.path}"' in series, series
        labels = {"alertname": "LLMKernelEarlyWarning", "severity": "ticket", "early_warning": "kernel",
                  "domain": w["domain"], "signal": w["signal"], "cgroup": stack.service.cgroup.path}
        payload = alert_payload("firing", labels, w["firing_since"], group_key='{}:{alertname="LLMKernelEarlyWarning"}')
        payload["alerts"][0]["annotations"]["began_at"] = f"{w['began_at']:.3f}"  # as the generated rule sets it
        status, body = await stack.responder.post_alert(payload)
        assert status == 200, body
        early = await stack.responder.wait_verdict(body["incident_id"])
        assert early["playbook"] == "kernel-early-warning", early["playbook"]
        assert early["verdict"]["domains"][:1] == ["network"], (early["verdict"]["decision"], early["verdict"]["abstain_reason"],
                                                                 early["capture"]["baseline_note"])
        assert early["thread"]["slack"]["ts"]  # its quiet thread is posted
        roots = len(stack.slack.threads())
        page_labels = {"alertname": "LLMTTFTBurn", "severity": "page", "slo": "ttft", "scenario_run": "early",
                       "cgroup": stack.service.cgroup.path}
        status, body = await stack.responder.post_alert(alert_payload(
            "firing", page_labels, time.time(), group_key='{}:{alertname="LLMTTFTBurn", scenario_run="early"}'))
        assert status == 200, body
        page = await stack.responder.wait_verdict(body["incident_id"])
    early_ts = early["thread"]["slack"]["ts"]
    assert page["thread"]["slack"] == {"channel": early["thread"]["slack"]["channel"], "ts": early_ts,
                                       "borrowed_from": early["id"]}
    assert page["evidence"]["early_warning"]["incident"] == early["id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        replies = stack.slack.threads()[early_ts]["replies"]
        if any(r["text"].startswith("LLMTTFTBurn: ") for r in replies):  # the capture's verdict, edited in
            break
        await asyncio.sleep(0.3)
    texts = [r["text"] for r in stack.slack.threads()[early_ts]["replies"]]
    heads = [t[:90] for t in texts]
    assert any("LLMTTFTBurn is paging for this workload" in t for t in texts), heads
    assert any(t.startswith("LLMTTFTBurn: network") for t in texts), heads  # the page's verdict, in the same thread
    assert len(stack.slack.threads()) == roots, "the page opened a thread of its own"
    print(f"early warning fired {warned_s:.1f} s into the loss; the page joined its thread")
