"""Two responder replicas on one PostgreSQL database (a real server): each alert is processed by
one replica, each incident's jobs run on one replica at a time, a dead replica's work is taken
over once its lease lapses (and not before), and each chat message is posted once.

"Replicas" are store instances with different owner names, from threads of this process, and in
the last test two real ``llmslo serve`` processes.
"""
from __future__ import annotations

import asyncio
import io
import secrets
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest

from lab.harness import ResponderProcess, alert_payload
from responder import cli, config
from responder.app import Responder
from responder.delivery.outbox import Deliverer
from responder.delivery.sinks.slack import SlackSink
from responder.render.thread import Message
from responder.store import open_store
from responder.store.base import JOB_LEASE_S, MAX_JOB_ATTEMPTS, MESSAGE_LEASE_S, StoreError, StoreUnavailable
from responder.store.postgres import PG_SCHEMA_VERSION, PostgresIncidentStore
from tests.responder.test_server import closed_port, make_settings
from tests.responder.test_store import Clock, accept, alert, note
from tests.standins.slack import DEFAULT_TOKEN, SlackStandin


@pytest.fixture
def replicas(pg_url):
    """``replicas(n, **kw)``: n stores named replica-a, replica-b, ... on one fresh database."""
    opened: list[PostgresIncidentStore] = []

    def make(n: int = 2, **kw) -> list[PostgresIncidentStore]:
        stores = [PostgresIncidentStore(pg_url, owner=f"replica-{chr(ord('a') + len(opened) + i)}", **kw)
                  for i in range(n)]
        opened.extend(stores)
        return stores

    yield make
    for s in opened:
        s.close()


def at_once(*calls):
    """Run the calls in threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def firing(group: str, fingerprint: str = "fp1"):
    return note(alert(fingerprint), group_key=group)


def resolved(group: str, fingerprint: str = "fp1"):
    return note(alert(fingerprint, "resolved"), group_key=group)


# -- intake ---------------------------------------------------------------------------------------

def test_the_same_alert_sent_to_both_replicas_at_once_is_one_incident_and_one_job(replicas):
    a, b = replicas(2)
    n = firing("g1")
    results = at_once(*[lambda s=s: accept(s, n) for s in (a, b) * 6])
    assert len({r.incident_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert sum(r.new_alerts for r in results) == 1 and sum(r.duplicates for r in results) == 11
    assert a.pending_jobs() == b.pending_jobs() == 1

    claims = at_once(*[s.claim_job for s in (a, b) * 4])
    got = [j for j in claims if j is not None]
    assert len(got) == 1 and got[0].attempts == 1
    assert got[0].lease_owner in ("replica-a", "replica-b")
    assert a.claim_job() is None and b.claim_job() is None
    assert a.counts()["jobs"] == {"pending": 0, "running": 1, "done": 0, "failed": 0}


# -- one replica per incident ----------------------------------------------------------------------

def test_a_pending_job_of_an_incident_another_replica_is_working_on_waits_for_that_replica(replicas):
    a, b = replicas(2)
    accept(a, firing("g1"))
    investigate = a.claim_job()
    resolve_id = accept(b, resolved("g1")).job_id
    assert resolve_id is not None

    assert b.claim_job() is None  # the resolve job is not handed to the other replica
    job = a.claim_job()  # the replica that holds the incident takes it
    assert (job.id, job.kind, job.lease_owner) == (resolve_id, "resolve", "replica-a")
    a.finish_job(investigate.id)
    a.finish_job(job.id)

    accept(b, firing("g2"))  # a different incident is free for either
    assert b.claim_job().lease_owner == "replica-b"


def test_concurrent_claims_never_hand_a_job_twice_nor_split_an_incident(replicas):
    a, b = replicas(2)
    incidents = 12
    for i in range(incidents):
        accept(a, firing(f"g{i}"))
        accept(b, resolved(f"g{i}"))  # each incident: investigate and resolve, both pending
    assert a.pending_jobs() == 2 * incidents

    claimed: list = []
    lock = threading.Lock()

    def drain(store):
        def run():
            while (job := store.claim_job()) is not None:
                with lock:
                    claimed.append(job)
        return run

    at_once(*[drain(s) for s in (a, b) * 3])
    drain(a)()  # whatever a concurrent claim skipped for a moment
    drain(b)()

    ids = [j.id for j in claimed]
    assert len(ids) == len(set(ids)) == 2 * incidents  # every job, each once
    owners = defaultdict(set)
    for j in claimed:
        owners[j.incident_id].add(j.lease_owner)
    assert all(len(o) == 1 for o in owners.values()), owners
    assert a.pending_jobs() == 0


# -- takeover ---------------------------------------------------------------------------------------

def test_a_dead_replicas_job_is_taken_over_once_its_lease_lapses(replicas):
    clock = Clock()
    a, b = replicas(2, clock=clock)
    accept(a, firing("g1"))
    job = a.claim_job()
    assert job.lease_until == pytest.approx(clock.now + JOB_LEASE_S)
    # a "dies": it never renews
    clock.now += JOB_LEASE_S - 1
    assert b.claim_job() is None
    clock.now += 2
    taken = b.claim_job()
    assert (taken.id, taken.attempts, taken.lease_owner) == (job.id, 2, "replica-b")
    assert "replica-a" in taken.last_error and "lapsed" in taken.last_error
    assert b.claim_job() is None

    # a comes back (it was only stalled): its outcome no longer counts, and it cannot renew
    assert a.renew_leases([job.id]) == set()
    assert a.finish_job(job.id) is False
    assert a.fail_job(job.id, "late", retry=True) is False
    assert a.get_job(job.id).state == "running" and a.get_job(job.id).lease_owner == "replica-b"
    assert b.finish_job(job.id) is True
    assert b.get_job(job.id).state == "done"


def test_a_renewed_lease_is_not_taken_over(replicas):
    clock = Clock()
    a, b = replicas(2, clock=clock)
    accept(a, firing("g1"))
    job = a.claim_job()
    for _ in range(4):  # working for 4 x 40 s, renewing as it goes
        clock.now += 40
        assert a.renew_leases([job.id]) == {job.id}
        assert b.claim_job() is None and b.requeue_running() == 0
    clock.now += JOB_LEASE_S + 1  # then it stops
    assert b.claim_job().id == job.id


def test_a_job_lapsing_on_its_last_attempt_fails_instead_of_running_again(replicas):
    clock = Clock()
    a, b = replicas(2, clock=clock)
    accept(a, firing("g1"))
    for _ in range(MAX_JOB_ATTEMPTS - 1):
        a.fail_job(a.claim_job().id, "boom", retry=True)
    job = a.claim_job()
    assert job.attempts == MAX_JOB_ATTEMPTS
    clock.now += JOB_LEASE_S + 1
    assert b.claim_job() is None
    final = b.get_job(job.id)
    assert final.state == "failed" and "out of attempts" in final.last_error


def test_starting_a_replica_requeues_only_its_own_or_lapsed_jobs(replicas, pg_url):
    clock = Clock()
    a, b = replicas(2, clock=clock)
    accept(a, firing("g1"))
    accept(a, firing("g2"))
    a_job = a.claim_job()
    b_job = b.claim_job()
    assert {a_job.lease_owner, b_job.lease_owner} == {"replica-a", "replica-b"}

    # a third replica starts: both leases are live, nothing is taken back
    c = replicas(1, clock=clock)[0]
    assert c.requeue_running() == 0
    assert {a.get_job(a_job.id).state, a.get_job(b_job.id).state} == {"running"}

    # replica-a restarts under its own name: its job comes back at once, b's stays with b
    a.close()
    a_again = PostgresIncidentStore(pg_url, owner="replica-a", clock=clock)
    try:
        assert a_again.requeue_running() == 1
        assert a_again.get_job(a_job.id).state == "pending"
        assert a_again.get_job(b_job.id).state == "running"
        # b dies; once its lease lapses, a start elsewhere takes its job back too
        clock.now += JOB_LEASE_S + 1
        assert c.requeue_running() == 1
        assert c.get_job(b_job.id).state == "pending" and c.get_job(b_job.id).last_error == "interrupted"
    finally:
        a_again.close()


def test_leases_run_on_the_database_clock(replicas):
    """No injected clock: lease expiry is the server's time, the same for every replica."""
    a, b = replicas(2, job_lease_s=1.0)
    accept(a, firing("g1"))
    job = a.claim_job()
    assert abs(job.lease_until - (time.time() + 1.0)) < 5  # the server runs on this machine
    assert b.claim_job() is None
    time.sleep(1.2)
    assert b.claim_job().id == job.id


# -- the outbox -------------------------------------------------------------------------------------

def _messages(store, incidents: int, per_thread: int) -> dict[int, tuple[str, str]]:
    """Enqueue messages for new incidents; {message id: (incident, sink)}."""
    out = {}
    for i in range(incidents):
        iid = accept(store, firing(f"m{i}")).incident_id
        for step in range(per_thread):
            mid = store.enqueue_message(iid, "slack", f"step:{step}", {"n": step})
            out[mid] = (iid, "slack")
    return out


def test_messages_claimed_by_one_replica_are_not_sent_by_the_other(replicas):
    clock = Clock()
    a, b = replicas(2, clock=clock)
    threads = _messages(a, 2, 3)
    first, second = sorted({t for t in threads.values()})
    mine = a.claim_messages()
    assert [m.id for m in mine] == sorted(threads) and {m.lease_owner for m in mine} == {"replica-a"}
    assert b.claim_messages() == []
    assert not any(b.hold_message(mid) for mid in threads)  # never sent by b
    assert all(a.hold_message(mid) for mid in threads)
    # a later step of a thread a holds is a's too, or the thread's order would be two replicas'
    later = a.enqueue_message(first[0], "slack", "step:9", {"n": 9})
    threads[later] = first
    assert b.claim_messages() == []
    assert [m.id for m in a.claim_messages()] == sorted(threads)
    mine = [a.get_message(mid) for mid in sorted(threads)]

    for m in mine:
        if threads[m.id] == first:
            a.mark_sent(m.id, {"ts": "1"})
    assert b.claim_messages() == []  # the second thread is still a's
    clock.now += MESSAGE_LEASE_S + 1  # a dies before sending it
    taken = b.claim_messages()
    assert {threads[m.id] for m in taken} == {second} and len(taken) == 3
    assert not any(a.hold_message(m.id) for m in taken)
    for m in taken:
        b.mark_sent(m.id, {"ts": "2"})
    assert a.counts()["messages"] == {"pending": 0, "sent": 7, "dead": 0}


def test_concurrent_outbox_claims_are_disjoint_and_keep_threads_whole(replicas):
    a, b = replicas(2)
    threads = _messages(a, 15, 3)
    claims = at_once(a.claim_messages, b.claim_messages, a.claim_messages, b.claim_messages)
    holder: dict[int, str] = {}
    for batch in claims:
        for m in batch:
            assert holder.setdefault(m.id, m.lease_owner) == m.lease_owner
    by_thread = defaultdict(set)
    for mid, owner in holder.items():
        by_thread[threads[mid]].add(owner)
    assert all(len(o) == 1 for o in by_thread.values()), by_thread
    # whatever a claim skipped for a moment is claimed later, still one replica per thread
    for s in (a, b):
        for m in s.claim_messages():
            assert by_thread[threads[m.id]] <= {m.lease_owner}
            holder[m.id] = m.lease_owner
    assert set(holder) == set(threads)


async def test_two_replicas_delivering_post_each_message_once_in_order(replicas, standin):
    a, b = replicas(2)
    sinks = [SlackSink(token=DEFAULT_TOKEN, default_channel="#llm-incidents", base_url=standin.base_url, timeout=2)
             for _ in range(2)]
    deliverers = [Deliverer(a, {"slack": sinks[0]}), Deliverer(b, {"slack": sinks[1]})]
    try:
        expected, ids = {}, []
        for i in range(6):
            iid = accept(a, firing(f"d{i}")).incident_id
            for step, op in (("root", "root"), ("reply:1", "reply"), ("reply:2", "reply")):
                ids.append(a.enqueue_message(iid, "slack", step, {"op": op, "channel": None,
                                                                  "message": Message(f"{iid} {step}").to_dict()}))
            expected[iid] = [f"{iid} reply:1", f"{iid} reply:2"]
        for _ in range(10):
            await asyncio.gather(*(d.deliver_pending() for d in deliverers))
            if not a.pending_messages():
                break
        assert a.pending_messages() == []
        threads = standin.threads().values()
        roots = Counter(t["root"]["text"].split()[0] for t in threads)
        assert roots == Counter(dict.fromkeys(expected, 1))  # one thread per incident
        for t in threads:
            iid = t["root"]["text"].split()[0]
            assert [r["text"] for r in t["replies"]] == expected[iid]
        assert len(standin.calls_to("chat.postMessage")) == 6 * 3  # nothing posted twice
        sent = [a.get_message(i) for i in ids]
        assert {m.state for m in sent} == {"sent"}
        assert {m.lease_owner for m in sent} <= {"replica-a", "replica-b"}
    finally:
        for s in sinks:
            await s.close()


# -- the server's side ------------------------------------------------------------------------------

async def test_the_server_renews_the_leases_of_the_jobs_its_workers_hold(tmp_path, pg_url):
    responder = Responder.build(make_settings(tmp_path, database_url=pg_url), console_stream=io.StringIO())
    other = PostgresIncidentStore(pg_url, owner="replica-other")
    keeper = None
    try:
        store = responder.store
        assert store.backend == "postgresql" and store.owner != other.owner
        store.job_lease_s, store.lease_renew_s = 1.0, 0.2
        accept(store, firing("g1"))
        job = store.claim_job()
        responder.active_jobs[job.id] = job.incident_id  # what a worker does while it runs the job
        keeper = asyncio.create_task(responder.keep_leases())
        await asyncio.sleep(2.5)  # over twice the lease
        assert await asyncio.to_thread(other.claim_job) is None
        responder.active_jobs.clear()  # the worker is stuck or gone: nothing renews the lease
        await asyncio.sleep(1.5)
        assert (await asyncio.to_thread(other.claim_job)).id == job.id
    finally:
        if keeper:
            keeper.cancel()
        other.close()
        await responder.stop()


# -- opening ----------------------------------------------------------------------------------------

def test_replicas_starting_together_create_the_schema_once(pg_url):
    stores = at_once(*[lambda i=i: PostgresIncidentStore(pg_url, owner=f"r{i}") for i in range(4)])
    try:
        assert {s.schema_version for s in stores} == {PG_SCHEMA_VERSION}
        accept(stores[0], firing("g1"))
        assert stores[3].counts()["incidents"]["firing"] == 1
    finally:
        for s in stores:
            s.close()


def test_a_newer_schema_is_refused(pg_url):
    with PostgresIncidentStore(pg_url) as s, s._tx() as conn:
        conn.execute("UPDATE llmslo_schema SET version=99")
    with pytest.raises(StoreError, match="newer than this responder"):
        PostgresIncidentStore(pg_url)


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path):
    port = closed_port()
    with pytest.raises(StoreUnavailable) as err:
        open_store(f"postgresql://responder:s3cret@127.0.0.1:{port}/incidents", tmp_path / "x.sqlite3",
                   connect_timeout_s=2)
    assert f"responder@127.0.0.1:{port}/incidents" in str(err.value) and "s3cret" not in str(err.value)
    for bad in ("postgresql://u:s3cret@host:notaport/db", "postgresql://u:s3cret@[::1/db",
                "postgresql://u:s3cret@host/db?nosuch=1"):
        with pytest.raises(StoreError, match="^not a PostgreSQL URL") as err:
            open_store(bad, tmp_path / "x.sqlite3")
        assert "s3cret" not in str(err.value)


def test_serve_with_an_unreachable_database_exits_with_a_message(tmp_path, monkeypatch, capsys):
    port = closed_port()
    monkeypatch.setenv("LLMSLO_DATABASE_URL", f"postgresql://responder:s3cret@127.0.0.1:{port}/incidents")
    monkeypatch.setenv("LLMSLO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LLMSLO_WEBHOOK_TOKEN", "t")
    assert cli.main(["serve", "--port", str(closed_port())]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "llmslo: configuration: database_url: the incident store did not open: PostgreSQL at " \
           f"responder@127.0.0.1:{port}/incidents" in err
    assert "Traceback" not in err and "s3cret" not in err


def test_a_database_url_of_another_kind_is_refused_by_name():
    with pytest.raises(config.ConfigError, match="^database_url: expected postgresql://") as err:
        config.load(env={"LLMSLO_DATABASE_URL": "mysql://u:pw@db/incidents"})
    assert "pw" not in str(err.value)
    assert config.load(env={"LLMSLO_DATABASE_URL": "postgresql://u@db/x"}).database_url == "postgresql://u@db/x"


# -- two real responders ----------------------------------------------------------------------------

@pytest.mark.e2e
async def test_two_serve_processes_on_one_database_make_one_incident_and_one_thread(tmp_path, pg_url):
    slack = SlackStandin()
    env = {"LLMSLO_DATABASE_URL": pg_url, "LLMSLO_SLACK_BOT_TOKEN": DEFAULT_TOKEN,
           "LLMSLO_SLACK_API_URL": await slack.start(),
           # a remote agent on a closed port: captures fail at once, the incident abstains (no eBPF)
           "LLMSLO_AGENT_URL": f"http://127.0.0.1:{closed_port()}", "LLMSLO_AGENT_TOKEN": "x"}
    token = secrets.token_urlsafe(16)
    procs = [ResponderProcess(tmp_path / f"replica{i}", token=token, extra_env=env) for i in range(2)]
    try:
        for p in procs:
            p.start()
        ready = [await p.wait_ready() for p in procs]
        assert [r["store"]["backend"] for r in ready] == ["postgresql"] * 2
        owners = {r["store"]["owner"] for r in ready}
        assert len(owners) == 2

        payload = alert_payload("firing", {"alertname": "LLMErrorBurn", "severity": "page", "pid": "1"},
                                time.time())
        answers = await asyncio.gather(*(p.post_alert(payload) for p in procs))
        assert [status for status, _ in answers] == [200, 200]
        bodies = [body for _, body in answers]
        incident_id = bodies[0]["incident_id"]
        assert bodies[1]["incident_id"] == incident_id
        assert sorted(b["new_alerts"] for b in bodies) == [0, 1]
        assert sorted(b["duplicates"] for b in bodies) == [0, 1]

        inc = await procs[1].wait_verdict(incident_id)
        assert inc["verdict"] is not None
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession(headers=procs[0].headers()) as s:
            while time.monotonic() < deadline:
                async with s.get(procs[0].url + "/healthz") as r:
                    counts = (await r.json())["counts"]
                if counts["messages"]["pending"] == 0 and counts["jobs"]["done"] == 1:
                    break
                await asyncio.sleep(0.3)
        await asyncio.sleep(2)  # anything that would be sent twice has had its chance
        assert counts["jobs"] == {"pending": 0, "running": 0, "done": 1, "failed": 0}
        assert counts["incidents"]["firing"] == 1 and counts["messages"]["pending"] == 0
        threads = [t for t in slack.threads().values() if incident_id in t["root"]["text"]]
        assert len(threads) == 1 and len(slack.threads()) == 1
        texts = [reply["text"] for reply in threads[0]["replies"]]
        assert texts and len(texts) == len(set(texts))
        with PostgresIncidentStore(pg_url) as store:
            job = store.get_job(bodies[0]["job_id"] or bodies[1]["job_id"])
            assert job.incident_id == incident_id and job.lease_owner in owners
    finally:
        for p in procs:
            p.stop()
        await slack.stop()
