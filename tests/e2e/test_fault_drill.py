"""The fault drill: one ``llmslo serve`` (SQLite on a small tmpfs of the test's own, Slack through
the stand-in) lives through a poison label, its database write-locked by another process for 60 s,
its disk filled, and a SIGKILL while Slack has carried out a post whose answer never came back.
Senders retry as Alertmanager does (a 5xx is retried, a 4xx is not). Afterwards, with no hand on
anything: every accepted alert has its verdict, every incident has one thread root and one
attribution reply in Slack, nothing is dead, and the refused poison left no trace.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sqlite3
import subprocess
import sys
import time

import aiohttp
import pytest

from common.net import free_port
from lab.harness import ResponderProcess, alert_payload
from tests.responder.test_store_hardening import LOCKER
from tests.standins.slack import DEFAULT_TOKEN, SlackStandin
from tests.tmpfs import tmpfs

pytestmark = pytest.mark.e2e

LOCK_S = 60


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "size=24m") as d:
        yield d


class Drill:
    def __init__(self, tmp_path, data_dir):
        self.tmp_path = tmp_path
        self.data_dir = data_dir
        self.token = secrets.token_urlsafe(16)
        self.slack = SlackStandin()
        self.procs: list[ResponderProcess] = []
        self.accepted: dict[str, str] = {}  # alertname -> incident id

    async def start(self) -> ResponderProcess:
        env = {"LLMSLO_SLACK_BOT_TOKEN": DEFAULT_TOKEN, "LLMSLO_SLACK_API_URL": self.api,
               # no agent listens there: each investigation ends at once, abstaining
               "LLMSLO_AGENT_URL": f"http://127.0.0.1:{free_port()}", "LLMSLO_AGENT_TOKEN": "drill"}
        proc = ResponderProcess(self.data_dir, token=self.token, extra_env=env,
                                log_path=self.tmp_path / f"run{len(self.procs) + 1}.log")
        self.procs.append(proc)
        proc.start()
        await proc.wait_ready()
        return proc

    async def send(self, proc: ResponderProcess, name: str, deadline_s: float = 180) -> None:
        """As Alertmanager does: retry a 5xx (or no answer) with backoff, give up on a 4xx."""
        body = alert_payload("firing", {"alertname": name, "pid": "1"}, time.time())
        deadline = time.monotonic() + deadline_s
        delay = 0.5
        while time.monotonic() < deadline:
            try:
                status, answer = await proc.post_alert(body)
            except aiohttp.ClientError:
                status, answer = 0, {}
            if status == 200:
                self.accepted[name] = answer["incident_id"]
                return
            assert status == 0 or status >= 500, (status, answer)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
        raise AssertionError(f"{name} was never accepted")


async def health(proc: ResponderProcess) -> int:
    async with aiohttp.ClientSession() as s:
        async with s.get(proc.url + "/healthz") as r:
            return r.status


async def test_the_responder_lives_through_the_drill_and_loses_nothing(tmp_path, small_disk):
    drill = Drill(tmp_path, small_disk / "data")
    drill.api = await drill.slack.start()
    try:
        proc = await drill.start()

        # 1. A poison label: refused with a 400 naming it, nothing stored, nothing blocked.
        poison = alert_payload("firing", {"alertname": "Poison", "pid": "1"}, time.time())
        body = json.dumps(poison).replace('"Poison"', '"Poison\\ud800"').encode()
        async with aiohttp.ClientSession(headers=proc.headers()) as s:
            async with s.post(proc.url + "/webhook/alertmanager", data=body,
                              headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400 and "alertname" in (await r.json())["error"]
        await drill.send(proc, "BeforeTheLock")

        # 2. Another process holds the write lock for LOCK_S: the webhook answers 503 (retried by
        #    the senders), /healthz is unhealthy, and both come back by themselves.
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(small_disk / "data" / "incidents.sqlite3"),
                                   str(LOCK_S)], stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
        during = [asyncio.create_task(drill.send(proc, f"DuringTheLock{i}")) for i in range(3)]
        await asyncio.sleep(10)
        assert await health(proc) == 503
        assert not drill.accepted.keys() & {f"DuringTheLock{i}" for i in range(3)}
        locker.wait(timeout=LOCK_S + 30)
        await asyncio.gather(*during)
        deadline = time.monotonic() + 15
        while await health(proc) != 200:
            assert time.monotonic() < deadline, "still unhealthy after the lock was released"
            await asyncio.sleep(0.5)

        # 3. The disk fills: what cannot be written waits (5xx for intake, retries for messages).
        filler = small_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)
        full = asyncio.create_task(drill.send(proc, "WhileTheDiskIsFull"))
        await asyncio.sleep(8)
        filler.unlink()
        await full

        # 4. SIGKILL while Slack has carried out a root post whose answer never came back.
        drill.slack.hang_after_next("chat.postMessage", seconds=120)
        await drill.send(proc, "KilledMidDelivery")
        deadline = time.monotonic() + 60
        while not any(c.get("hung") for c in drill.slack.calls_to("chat.postMessage")):
            assert time.monotonic() < deadline, "the hung post never happened"
            await asyncio.sleep(0.1)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        proc = await drill.start()

        # Afterwards, with no hand on anything: every accepted alert attributed, each thread once.
        expected = {"BeforeTheLock", *(f"DuringTheLock{i}" for i in range(3)), "WhileTheDiskIsFull",
                    "KilledMidDelivery"}
        assert set(drill.accepted) == expected
        for name, incident_id in drill.accepted.items():
            inc = await proc.wait_verdict(incident_id, timeout=120)
            assert inc["verdict"] is not None, name
        deadline = time.monotonic() + 90
        while True:
            counts = (await proc.health())["counts"]
            if counts["messages"]["pending"] == 0 and counts["jobs"]["pending"] + counts["jobs"]["running"] == 0:
                break
            assert time.monotonic() < deadline, counts
            await asyncio.sleep(1)
        await asyncio.sleep(3)  # anything that would be sent twice has had its chance
        assert counts["messages"]["dead"] == 0 and counts["jobs"]["failed"] == 0, counts
        threads = drill.slack.threads()
        roots = {}
        for t in threads.values():
            for name, incident_id in drill.accepted.items():
                if incident_id in t["root"]["text"]:
                    roots.setdefault(name, []).append(t)
        assert {n: len(ts) for n, ts in roots.items()} == {n: 1 for n in expected}, "a root missing or doubled"
        for name, (thread,) in roots.items():
            verdicts = [r for r in thread["replies"] if "Abstained" in r["text"] or "Fault domain" in r["text"]]
            assert len(verdicts) == 1, (name, [r["text"][:80] for r in thread["replies"]])
        conn = sqlite3.connect(f"file:{small_disk / 'data' / 'incidents.sqlite3'}?mode=ro", uri=True)
        try:
            assert conn.execute("SELECT COUNT(*) FROM incident_alerts WHERE alert LIKE '%Poison%'").fetchone()[0] == 0
        finally:
            conn.close()
    finally:
        for p in drill.procs:
            p.stop()
        await drill.slack.stop()
