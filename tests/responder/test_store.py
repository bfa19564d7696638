"""Tests for responder.store: dedup, the job queue, durability across crashes, the outbox.

The behaviour tests run against both back-ends (``store`` and ``make_store`` are parametrized:
SQLite in a temporary file, PostgreSQL in a fresh database of a real server); the tests of the
SQLite file itself use ``db_path``."""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from responder.store import open_store
from responder.store.base import MAX_JOB_ATTEMPTS, AcceptResult, NotFound, StoreBase, StoreClosed, StoreError
from responder.store.sqlite import SCHEMA_VERSION, IncidentStore

try:
    from responder.http.alertmanager import Alert, Notification
except ImportError:  # the intake is written separately; the store only duck-types these
    @dataclass
    class Alert:  # type: ignore[no-redef]
        status: str
        labels: dict[str, str]
        annotations: dict[str, str]
        starts_at: datetime
        ends_at: datetime | None
        generator_url: str
        fingerprint: str

        def dedup_key(self) -> tuple[str, str, str]:
            return (self.fingerprint, self.status, self.starts_at.isoformat())

        def to_dict(self) -> dict:
            return {"status": self.status, "labels": dict(self.labels),
                    "annotations": dict(self.annotations),
                    "startsAt": self.starts_at.isoformat(),
                    "endsAt": self.ends_at.isoformat() if self.ends_at else None,
                    "generatorURL": self.generator_url, "fingerprint": self.fingerprint}

    @dataclass
    class Notification:  # type: ignore[no-redef]
        receiver: str
        status: str
        alerts: list
        group_labels: dict[str, str] = field(default_factory=dict)
        common_labels: dict[str, str] = field(default_factory=dict)
        common_annotations: dict[str, str] = field(default_factory=dict)
        external_url: str = ""
        version: str = "4"
        group_key: str = ""
        truncated_alerts: int = 0

        def to_dict(self) -> dict:
            return {"receiver": self.receiver, "status": self.status,
                    "alerts": [a.to_dict() for a in self.alerts],
                    "commonLabels": dict(self.common_labels), "groupKey": self.group_key}


T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
GROUP = '{}:{alertname="LLMErrorBudgetBurn"}'
LABELS = {"alertname": "LLMErrorBudgetBurn", "service": "rag-api", "severity": "page"}


def alert(fingerprint: str = "fp1", status: str = "firing", starts_at: datetime = T0,
          ends_at: datetime | None = None) -> Alert:
    return Alert(status=status, labels={**LABELS, "fp": fingerprint},
                 annotations={"summary": "burn"},
                 starts_at=starts_at, ends_at=ends_at, generator_url="", fingerprint=fingerprint)


def note(*alerts: Alert, group_key: str = GROUP, status: str | None = None) -> Notification:
    if status is None:
        status = "firing" if any(a.status == "firing" for a in alerts) else "resolved"
    return Notification(receiver="llmslo", status=status, alerts=list(alerts),
                        group_labels={"alertname": LABELS["alertname"]}, common_labels=dict(LABELS),
                        common_annotations={}, external_url="http://alertmanager",
                        version="4", group_key=group_key, truncated_alerts=0)


def raw(n: Notification) -> bytes:
    return json.dumps(n.to_dict()).encode()


def accept(store: IncidentStore, n: Notification) -> AcceptResult:
    return store.accept(n, raw(n))


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "incidents.sqlite3"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.needs_postgres)])
def location(request, db_path: Path) -> tuple[str | None, str]:
    """Where a store lives: (database URL or None, SQLite path), as ``open_store`` takes them."""
    if request.param == "sqlite":
        return None, str(db_path)
    return request.getfixturevalue("pg_url"), str(db_path)


@pytest.fixture
def make_store(location):
    """Opens stores on one database (another process, or the same one restarted, when given the
    same ``owner``); all closed after the test."""
    opened: list[StoreBase] = []

    def make(**kw) -> StoreBase:
        s = open_store(*location, **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(make_store) -> StoreBase:
    return make_store()


def row_count(store: StoreBase, table: str) -> int:
    with store._tx(write=False) as conn:
        return conn.execute(f"SELECT COUNT(*) AS n FROM {table}").fetchone()["n"]


# -- intake and dedup ---------------------------------------------------------------------------

def test_accept_creates_incident_and_investigate_job(store: IncidentStore) -> None:
    n = note(alert("fp1"), alert("fp2"))
    result = accept(store, n)

    assert result.created and result.new_alerts == 2 and result.duplicates == 0
    assert result.incident_id.startswith("inc-") and len(result.incident_id) == 14
    inc = store.get_incident(result.incident_id)
    assert inc is not None and inc.status == "firing" and inc.group_key == GROUP
    assert inc.labels == LABELS
    assert sorted(a["fingerprint"] for a in inc.alerts) == ["fp1", "fp2"]
    assert inc.verdict is None
    json.dumps(inc.to_dict())  # JSON-able

    job = store.claim_job()
    assert job is not None and job.id == result.job_id
    assert (job.kind, job.state, job.attempts, job.incident_id) == (
        "investigate", "running", 1, result.incident_id)
    assert job.payload["groupKey"] == GROUP and len(job.payload["alerts"]) == 2
    assert store.claim_job() is None


def test_same_alert_again_is_a_duplicate_with_no_job(store: IncidentStore) -> None:
    first = accept(store, note(alert("fp1")))
    again = accept(store, note(alert("fp1", ends_at=T0 + timedelta(minutes=5))))  # repeat_interval

    assert again == AcceptResult(first.incident_id, False, 0, 1, None)
    assert store.pending_jobs() == 1
    assert store.counts()["incidents"] == {"firing": 1, "resolved": 0}
    # The raw payload of every call is kept, duplicates included.
    assert row_count(store, "notifications") == 2


def test_new_starts_at_for_same_fingerprint_is_a_new_alert(store: IncidentStore) -> None:
    first = accept(store, note(alert("fp1")))
    later = accept(store, note(alert("fp1", starts_at=T0 + timedelta(hours=1))))

    assert later.incident_id == first.incident_id and not later.created
    assert (later.new_alerts, later.duplicates) == (1, 0)
    # the first investigation still waits: it will read the merged alerts, no second job
    assert later.job_id is None and store.pending_jobs() == 1
    job = store.claim_job()
    third = accept(store, note(alert("fp1", starts_at=T0 + timedelta(hours=2))))
    assert third.job_id is not None and third.job_id != job.id  # a running one does not absorb it
    inc = store.get_incident(first.incident_id)
    assert len(inc.alerts) == 1  # latest state per fingerprint
    assert inc.alerts[0]["startsAt"].startswith("2024-05-01T14:00")  # the newest state


def test_resolved_notification_enqueues_resolve_job(store: IncidentStore) -> None:
    first = accept(store, note(alert("fp1"), alert("fp2")))
    store.finish_job(store.claim_job().id)

    result = accept(store, note(alert("fp1", "resolved"), alert("fp2", "resolved")))
    assert (result.incident_id, result.created, result.new_alerts) == (first.incident_id, False, 2)
    job = store.claim_job()
    assert job.id == result.job_id and job.kind == "resolve" and job.payload["status"] == "resolved"
    assert {a["status"] for a in store.get_incident(first.incident_id).alerts} == {"resolved"}

    # Alertmanager retrying the same resolved notification is a duplicate.
    retry = accept(store, note(alert("fp1", "resolved"), alert("fp2", "resolved")))
    assert (retry.duplicates, retry.job_id) == (2, None)


def test_partial_resolution_does_not_resolve(store: IncidentStore) -> None:
    first = accept(store, note(alert("fp1"), alert("fp2")))
    partial = accept(store, note(alert("fp1", "resolved"), alert("fp2")))
    assert (partial.new_alerts, partial.duplicates, partial.job_id) == (1, 1, None)
    statuses = {a["fingerprint"]: a["status"] for a in store.get_incident(first.incident_id).alerts}
    assert statuses == {"fp1": "resolved", "fp2": "firing"}


def test_resolved_with_no_open_incident_creates_nothing(store: IncidentStore) -> None:
    result = accept(store, note(alert("fp1", "resolved")))
    assert result == AcceptResult(None, False, 1, 0, None)
    assert store.list_incidents() == [] and store.pending_jobs() == 0


def test_late_retry_of_older_state_does_not_regress_alert(store: IncidentStore) -> None:
    first = accept(store, note(alert("fp1"), alert("fp2")))
    accept(store, note(alert("fp1", "resolved"), alert("fp2")))
    late = accept(store, note(alert("fp1"), alert("fp2")))  # a delayed retry of the first call
    assert late.duplicates == 2 and late.job_id is None
    statuses = {a["fingerprint"]: a["status"] for a in store.get_incident(first.incident_id).alerts}
    assert statuses["fp1"] == "resolved"


def test_new_firing_after_resolution_opens_a_new_incident(store: IncidentStore) -> None:
    first = accept(store, note(alert("fp1")))
    accept(store, note(alert("fp1", "resolved")))
    store.update_incident(first.incident_id, status="resolved")
    again = accept(store, note(alert("fp1", starts_at=T0 + timedelta(hours=2))))
    assert again.created and again.incident_id != first.incident_id
    assert [i.id for i in store.list_incidents()] == [again.incident_id, first.incident_id]
    assert [i.id for i in store.list_incidents(status="resolved")] == [first.incident_id]
    assert store.get_incident(first.incident_id).resolved_at is not None


async def test_concurrent_accepts_from_threads_open_one_incident(store: IncidentStore) -> None:
    results = await asyncio.gather(*(
        asyncio.to_thread(accept, store, note(alert(f"fp{i % 4}"))) for i in range(16)))
    assert len({r.incident_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert sum(r.new_alerts for r in results) == 4 and sum(r.duplicates for r in results) == 12
    assert store.pending_jobs() == 1  # a storm for one group waits as one investigation


# -- jobs and durability ------------------------------------------------------------------------

def test_job_survives_closing_without_finishing(make_store) -> None:
    s1 = make_store(owner="replica-1")
    result = accept(s1, note(alert("fp1")))
    claimed = s1.claim_job()
    assert claimed.id == result.job_id
    s1.close()  # "crash": running, never finished

    s2 = make_store(owner="replica-1")  # the same replica, restarted
    assert s2.claim_job() is None  # still marked running until start-up requeues it
    assert s2.requeue_running() == 1
    job = s2.claim_job()
    assert job.id == result.job_id and job.attempts == 2 and job.last_error == "interrupted"
    assert job.lease_owner == "replica-1"
    assert s2.claim_job() is None  # exactly once
    assert s2.finish_job(job.id) is True
    assert s2.pending_jobs() == 0 and s2.requeue_running() == 0
    assert s2.get_job(job.id).state == "done"


def _accept_then_die(location: tuple[str | None, str]) -> None:
    s = open_store(*location)
    accept(s, note(alert("fp-crash")))
    os._exit(0)  # no close(), no cleanup: what a kill right after the 200 looks like


def test_job_survives_process_killed_after_accept(location, make_store) -> None:
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_accept_then_die, args=(location,))
    child.start()
    child.join(60)
    assert child.exitcode == 0

    with make_store() as s:
        assert s.requeue_running() == 0
        job = s.claim_job()
        assert job is not None and job.kind == "investigate"
        assert job.payload["alerts"][0]["fingerprint"] == "fp-crash"
        assert s.get_incident(job.incident_id).status == "firing"


def test_fail_job_retries_until_max_attempts(store: IncidentStore) -> None:
    accept(store, note(alert("fp1")))
    for attempt in range(1, MAX_JOB_ATTEMPTS + 1):
        job = store.claim_job()
        assert job.attempts == attempt
        store.fail_job(job.id, f"boom {attempt}", retry=True)
    assert store.claim_job() is None
    final = store.get_job(job.id)
    assert (final.state, final.last_error) == ("failed", f"boom {MAX_JOB_ATTEMPTS}")

    accept(store, note(alert("fp2")))
    job = store.claim_job()
    store.fail_job(job.id, "bad payload", retry=False)
    assert store.get_job(job.id).state == "failed"
    assert store.counts()["jobs"] == {"pending": 0, "running": 0, "done": 0, "failed": 2}
    with pytest.raises(NotFound):
        store.finish_job(9999)


def test_requeue_fails_a_job_that_crashed_on_its_last_attempt(make_store) -> None:
    with make_store(owner="replica-1") as s:
        accept(s, note(alert("fp1")))
        for _ in range(MAX_JOB_ATTEMPTS - 1):
            s.fail_job(s.claim_job().id, "boom", retry=True)
        s.claim_job()  # last attempt; the process "crashes"
    with make_store(owner="replica-1") as s:
        assert s.requeue_running() == 0
        assert s.claim_job() is None and s.counts()["jobs"]["failed"] == 1


# -- incidents ----------------------------------------------------------------------------------

def test_update_incident_fields(store: IncidentStore) -> None:
    inc_id = accept(store, note(alert("fp1"))).incident_id
    verdict = {"domains": ["network"], "confidence": 0.8, "hypotheses": [], "abstain_reason": None}
    slack = {"channel": "C1", "ts": "1.2"}
    console = {"channel": "-", "ts": "0"}
    store.update_incident(inc_id, playbook="llm-burn", verdict=verdict,
                          capture={"probes": ["tcp_retrans"]}, report={"summary": "network"},
                          thread={"slack": slack})
    # thread is merged per sink: the console sink does not erase Slack's thread
    store.update_incident(inc_id, thread={"console": console}, error="probe timeout")
    inc = store.get_incident(inc_id)
    assert inc.playbook == "llm-burn" and inc.verdict == verdict and inc.error == "probe timeout"
    assert inc.capture == {"probes": ["tcp_retrans"]} and inc.report == {"summary": "network"}
    assert inc.thread == {"slack": slack, "console": console}

    resolved = store.update_incident(inc_id, status="resolved", resolved_at=123.0)
    assert resolved.status == "resolved" and resolved.resolved_at == 123.0
    with pytest.raises(ValueError, match="unknown field"):
        store.update_incident(inc_id, colour="red")
    with pytest.raises(ValueError):
        store.update_incident(inc_id, status="closed")
    with pytest.raises(NotFound):
        store.update_incident("inc-missing", error="x")
    assert store.get_incident("inc-missing") is None


# -- outbox -------------------------------------------------------------------------------------

def test_outbox_step_is_enqueued_once(store: IncidentStore) -> None:
    inc_id = accept(store, note(alert("fp1"))).incident_id
    mid = store.enqueue_message(inc_id, "slack", "opened", {"text": "first"})
    assert mid is not None
    assert store.enqueue_message(inc_id, "slack", "opened", {"text": "second"}) is None
    other = store.enqueue_message(inc_id, "console", "opened", {"text": "first"})
    assert other is not None and other != mid

    pending = store.pending_messages("slack")
    assert [(m.id, m.body, m.state) for m in pending] == [(mid, {"text": "first"}, "pending")]
    assert [m.id for m in store.pending_messages()] == [mid, other]

    store.mark_sent(mid, {"ok": True, "ts": "1.2"})
    assert store.enqueue_message(inc_id, "slack", "opened", {"text": "again"}) is None
    sent = store.get_message(mid)
    assert (sent.state, sent.response) == ("sent", {"ok": True, "ts": "1.2"})
    assert sent.body == {"text": "first"}
    assert sent.sent_at is not None
    assert store.pending_messages("slack") == []


def test_outbox_retry_schedule_and_dead(make_store) -> None:
    clock = Clock()
    with make_store(clock=clock) as s:
        inc_id = accept(s, note(alert("fp1"))).incident_id
        mid = s.enqueue_message(inc_id, "slack", "verdict", {"text": "v"})
        s.mark_retry(mid, "HTTP 503", delay_s=30)
        assert s.pending_messages() == []  # held back
        clock.now += 29.9
        assert s.pending_messages() == []
        clock.now += 0.2
        (msg,) = s.pending_messages()
        assert (msg.attempts, msg.last_error) == (1, "HTTP 503")
        assert msg.next_attempt_at == pytest.approx(clock.now - 0.1)

        s.mark_dead(mid, "HTTP 400 channel_not_found")
        assert s.pending_messages() == []
        dead = s.get_message(mid)
        assert (dead.state, dead.attempts) == ("dead", 2)
        assert dead.last_error == "HTTP 400 channel_not_found"
        assert s.counts()["messages"] == {"pending": 0, "sent": 0, "dead": 1}


# -- the file itself ----------------------------------------------------------------------------

def test_wal_mode_full_sync_and_schema_version(db_path: Path) -> None:
    with IncidentStore(db_path) as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
            assert conn.execute("PRAGMA user_version").fetchone()[0] == store.schema_version >= 4
        finally:
            conn.close()


def test_a_version_3_file_gains_the_lease_columns_and_keeps_its_rows(db_path: Path) -> None:
    """A file written by the responder before leases (schema 3) opens, migrates, and its waiting
    job is claimed as before."""
    from responder.store import sqlite as store_module

    conn = sqlite3.connect(db_path.parent.mkdir(parents=True, exist_ok=True) or db_path)
    for version in range(3):
        for statement in store_module._MIGRATIONS[version].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO incidents (id, group_key, status, created_at, updated_at) "
                 "VALUES ('inc-0000000001', 'g', 'firing', 1, 1)")
    conn.execute("INSERT INTO jobs (incident_id, kind, payload, state, created_at) "
                 "VALUES ('inc-0000000001', 'investigate', '{}', 'pending', 1)")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with IncidentStore(db_path, owner="r1") as s:
        assert s.schema_version == SCHEMA_VERSION
        job = s.claim_job()
        assert (job.incident_id, job.lease_owner, job.lease_until) == ("inc-0000000001", "r1", None)


def test_newer_schema_is_refused_and_closed_store_says_so(db_path: Path) -> None:
    IncidentStore(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        IncidentStore(db_path)

    other = IncidentStore(db_path.with_name("other.sqlite3"))
    other.close()
    other.close()  # idempotent
    with pytest.raises(StoreClosed):
        other.pending_jobs()


def test_counts_shape(store: IncidentStore) -> None:
    accept(store, note(alert("fp1")))
    assert store.counts() == {"incidents": {"firing": 1, "resolved": 0},
                              "jobs": {"pending": 1, "running": 0, "done": 0, "failed": 0},
                              "messages": {"pending": 0, "sent": 0, "dead": 0}}
