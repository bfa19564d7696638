"""Nothing accepted is lost: an alert acknowledged just before the responder is SIGKILLed is
processed after a restart, exactly once, and posted once."""
from __future__ import annotations

import asyncio
import secrets
import signal
import time

import pytest

from lab.harness import ResponderProcess, alert_payload
from tests.standins.slack import DEFAULT_TOKEN, SlackStandin

pytestmark = [pytest.mark.e2e, pytest.mark.kernel]


class Restartable:
    """A ``llmslo serve`` on one data directory that a test kills and starts again, with a Slack
    stand-in; everything is stopped on the way out."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.token = secrets.token_urlsafe(16)
        self.slack = SlackStandin()
        self.procs: list[ResponderProcess] = []

    async def __aenter__(self) -> Restartable:
        self.env = {"LLMSLO_SLACK_BOT_TOKEN": DEFAULT_TOKEN, "LLMSLO_SLACK_API_URL": await self.slack.start()}
        return self

    async def start(self) -> ResponderProcess:
        n = len(self.procs) + 1
        proc = ResponderProcess(self.tmp_path / "data", token=self.token, extra_env=self.env,
                                log_path=self.tmp_path / f"run{n}.log")
        self.procs.append(proc)
        proc.start()
        await proc.wait_ready()
        return proc

    @staticmethod
    def kill(proc: ResponderProcess) -> None:
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()

    async def __aexit__(self, *exc) -> None:
        for proc in self.procs:
            proc.stop()
        await self.slack.stop()


async def test_alert_accepted_before_a_crash_is_processed_once_after_restart(tmp_path):
    async with Restartable(tmp_path) as r:
        first = await r.start()
        labels = {"alertname": "LLMTTFTBurn", "severity": "page", "pid": "1"}
        payload = alert_payload("firing", labels, time.time())
        status, body = await first.post_alert(payload)
        assert status == 200
        r.kill(first)  # mid-capture at the latest: the job is in the store
        second = await r.start()
        inc = await second.wait_verdict(body["incident_id"])
        assert inc["verdict"] is not None
        await asyncio.sleep(3)  # let delivery finish
        roots = [t for t in r.slack.threads().values() if body["incident_id"] in t["root"]["text"]]
        assert len(roots) == 1
        counts = (await second.health())["counts"]
        assert counts["jobs"]["done"] == 1 and counts["jobs"]["pending"] == 0
        # The same alert re-sent by Alertmanager after the restart is a duplicate.
        status, again = await second.post_alert(payload)
        assert status == 200 and again["duplicates"] == 1 and again["job_id"] is None


async def test_a_message_decided_but_not_yet_posted_is_posted_once_after_a_kill(tmp_path):
    """The root post is in flight (Slack holds the request) when the responder is SIGKILLed: the
    outbox still has it, and the restarted responder posts it, and everything after it, once."""
    async with Restartable(tmp_path) as r:
        slack = r.slack
        first = await r.start()
        slack.stall_next(1, seconds=15)  # the first chat.postMessage hangs, then is dropped
        status, body = await first.post_alert(alert_payload("firing", {"alertname": "LLMErrorBurn", "pid": "1"},
                                                            time.time()))
        assert status == 200
        deadline = time.monotonic() + 30
        while not slack.calls_to("chat.postMessage") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert slack.calls_to("chat.postMessage"), "the root was never attempted"
        r.kill(first)  # decided (in the outbox), not posted
        assert slack.threads() == {}
        second = await r.start()
        await second.wait_verdict(body["incident_id"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            threads = [t for t in slack.threads().values() if body["incident_id"] in t["root"]["text"]]
            if threads and any("Kernel capture" in reply["text"] for reply in threads[0]["replies"]):
                break
            await asyncio.sleep(0.3)
        await asyncio.sleep(2)  # anything that would be sent twice has had its chance
        threads = [t for t in slack.threads().values() if body["incident_id"] in t["root"]["text"]]
        assert len(threads) == 1 and len(slack.threads()) == 1
        texts = [reply["text"] for reply in threads[0]["replies"]]
        assert sum("Kernel capture" in t for t in texts) == 1, texts
        assert len(texts) == len(set(texts))


async def test_a_root_posted_but_not_recorded_before_a_kill_is_found_again_not_posted_twice(tmp_path):
    """Slack has carried out the root's chat.postMessage, but its answer never reaches the
    responder (held by the stand-in) when the responder is SIGKILLed: the outbox recorded that
    an attempt began, so the restarted responder finds the root in the channel's history by its
    outbox key and records it instead of posting a second root."""
    async with Restartable(tmp_path) as r:
        slack = r.slack
        first = await r.start()
        slack.hang_after_next("chat.postMessage", seconds=60)
        status, body = await first.post_alert(alert_payload("firing", {"alertname": "LLMErrorBurn", "pid": "1"},
                                                            time.time()))
        assert status == 200
        deadline = time.monotonic() + 30
        while not any(c.get("hung") for c in slack.calls_to("chat.postMessage")) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(slack.threads()) == 1, "the root was never posted"
        r.kill(first)  # posted in Slack, not recorded in the store
        second = await r.start()
        await second.wait_verdict(body["incident_id"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            threads = list(slack.threads().values())
            if threads and any("Kernel capture" in reply["text"] for reply in threads[0]["replies"]):
                break
            await asyncio.sleep(0.3)
        await asyncio.sleep(2)  # anything that would be sent twice has had its chance
        assert len(slack.threads()) == 1, "a second root was posted"
        assert slack.calls_to("conversations.history"), "the restarted responder did not look before posting"
        texts = [reply["text"] for reply in next(iter(slack.threads().values()))["replies"]]
        assert sum("Kernel capture" in t for t in texts) == 1, texts
