"""The incident store: the only place the responder writes state.

It owns, in one database:

- ``notifications``: every Alertmanager payload exactly as received (the raw bytes), so what was
  acknowledged with a 200 can always be replayed;
- ``alert_events``: one row per alert state change seen, keyed by (group key, fingerprint,
  status, startsAt). That key is how Alertmanager's resends (``repeat_interval``) and retries are
  recognised as duplicates;
- ``incidents``: one per alert group while it fires (at most one open incident per group key),
  with the pipeline's results (playbook, verdict, capture, report, chat thread ids);
- ``jobs``: the pipeline's work queue (``investigate`` / ``resolve``), so a crash loses no work;
- ``outbox``: chat messages persisted before they are sent, one per (incident, sink, step).

Two back-ends share the logic here (``StoreBase``) and differ only in SQL dialect, transactions
and leases:

- ``responder.store.sqlite.IncidentStore``, SQLite in one file under the data directory: one responder process.
  WAL journal, ``synchronous=FULL``, every public method one transaction, so anything a method
  has returned is on disk; one connection (``check_same_thread=False``) serialised by a lock. A
  job or message belongs to the one process there is, so claims take no lease that could expire,
  and ``requeue_running`` at start takes back every job left running.
- ``responder.store.postgres.PostgresIncidentStore``, for two or more replicas on one PostgreSQL
  database: claims are row leases (owner, expiry) so each incident's jobs and each chat message
  are handled by one replica at a time; see that module.

``open_store`` picks one from the settings. The services are asyncio code and call in through
``asyncio.to_thread``.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib import resources
from typing import Any, Protocol

# Group keys of incidents that no alert opened (ad hoc captures).
ADHOC_GROUP_PREFIX = "adhoc:"
MAX_JOB_ATTEMPTS = 3
# A job that failed waits before its next attempt: JOB_BACKOFF_S * 4**(attempts-1), capped.
JOB_BACKOFF_S = 5.0
JOB_BACKOFF_MAX_S = 300.0
# Fingerprints per dedup lookup (SQLite's default limit on bound parameters is 32,766).
DEDUP_CHUNK = 500
# Leases (PostgreSQL): a running job's lease is renewed every LEASE_RENEW_S by the replica working
# on it, so it lapses JOB_LEASE_S after that replica stops; a chat message's lease is taken right
# before each send and covers the longest send (three tries of a 10 s request, with waits).
JOB_LEASE_S = 60.0
LEASE_RENEW_S = JOB_LEASE_S / 4
MESSAGE_LEASE_S = 120.0

INCIDENT_STATUSES = ("firing", "resolved")
JOB_STATES = ("pending", "running", "done", "failed")
MESSAGE_STATES = ("pending", "sent", "dead")


class StoreError(Exception):
    """The store could not do what was asked; the message says why."""


class NotFound(StoreError, KeyError):
    """No incident, job or message with that id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StoreClosed(StoreError):
    """The store was closed; open a new ``IncidentStore``."""


class StoreUnavailable(StoreError):
    """The database could not be reached, is locked by someone else, is full or read-only, or
    dropped the transaction; nothing of it was written. Try again later."""


class Overloaded(StoreError):
    """Too many jobs are waiting; nothing was stored. Try again later."""


def load_migrations(dialect: str) -> dict[int, str]:
    """The schema's migrations for ``dialect`` (``sqlite`` or ``postgres``), from the package's
    ``schema/<dialect>/NNNN.sql`` files: {N - 1: the SQL taking version N - 1 to N}. Comment lines
    are dropped (statements are split on ``;``, which a comment may contain)."""
    files = sorted(resources.files("responder.store").joinpath("schema", dialect).iterdir(), key=lambda f: f.name)
    migrations: dict[int, str] = {}
    for f in files:
        if f.name.endswith(".sql"):
            sql = "\n".join(line for line in f.read_text().splitlines() if not line.lstrip().startswith("--"))
            migrations[int(f.name.removesuffix(".sql")) - 1] = sql
    if sorted(migrations) != list(range(len(migrations))):
        raise RuntimeError(f"schema/{dialect}: the migration files must be numbered 0001, 0002, … without gaps")
    return migrations


def job_backoff(attempts: int) -> float:
    """How long a job that failed its ``attempts``-th attempt waits before the next one."""
    return min(JOB_BACKOFF_MAX_S, JOB_BACKOFF_S * 4 ** max(0, attempts - 1))


def default_owner() -> str:
    """This replica's name in leases: host name and process id. A Kubernetes pod's host name is
    its own, and a restarted container (same pod, same pid 1) takes its own jobs back at once."""
    return f"{socket.gethostname()}:{os.getpid()}"


# What the store reads from responder.http.alertmanager's types (duck typed, so this module does not
# import the intake).
class AlertLike(Protocol):
    status: str
    starts_at: datetime
    fingerprint: str

    def dedup_key(self) -> tuple[str, str, str]: ...
    def to_dict(self) -> dict: ...


class NotificationLike(Protocol):
    status: str
    common_labels: dict[str, str]
    group_key: str

    @property  # read-only, so that a list of a concrete alert type matches
    def alerts(self) -> Sequence[AlertLike]: ...

    def to_dict(self) -> dict: ...


@dataclass
class Incident:
    id: str
    group_key: str
    status: str  # firing | resolved
    created_at: float
    updated_at: float
    resolved_at: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # latest state per fingerprint
    playbook: str | None = None
    verdict: dict[str, Any] | None = None  # None until attributed
    capture: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    thread: dict[str, dict[str, Any]] = field(default_factory=dict)  # sink -> {"channel", "ts"}
    error: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)  # {"prometheus": ..., "traces": ...}
    links: list[dict[str, Any]] = field(default_factory=list)  # [{"title", "url", "kind"}]
    attributed_at: float | None = None
    acknowledged: dict[str, Any] | None = None  # {"by": who, "at": unix s} once someone took it
    # The verdict posted at the alert's receipt, from the flight recorder, before the capture:
    # {"verdict", "at", "capture"}; None when there was none (an ad hoc capture, no recorder).
    preliminary: dict[str, Any] | None = None
    # Alerts of the group Alertmanager left out of its latest notification (its max_alerts).
    truncated_alerts: int = 0

    @property
    def source(self) -> str:
        """"adhoc" for captures started by a person (API, chat, CLI), else "alert"."""
        return "adhoc" if self.group_key.startswith(ADHOC_GROUP_PREFIX) else "alert"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "group_key": self.group_key, "status": self.status,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "resolved_at": self.resolved_at, "labels": dict(self.labels),
            "alerts": list(self.alerts), "playbook": self.playbook, "verdict": self.verdict,
            "capture": self.capture, "report": self.report, "thread": dict(self.thread),
            "error": self.error, "evidence": dict(self.evidence), "links": list(self.links),
            "attributed_at": self.attributed_at, "acknowledged": self.acknowledged, "source": self.source,
            "truncated_alerts": self.truncated_alerts, "preliminary": self.preliminary,
        }


@dataclass
class Job:
    id: int
    incident_id: str
    kind: str  # investigate | resolve
    payload: dict[str, Any]  # the notification, as Notification.to_dict()
    state: str  # pending | running | done | failed
    attempts: int
    last_error: str | None
    created_at: float
    claimed_at: float | None = None
    finished_at: float | None = None
    lease_owner: str | None = None  # the replica that claimed it last
    lease_until: float | None = None  # PostgreSQL: running, others may take it over after this
    next_attempt_at: float = 0.0  # a job retried after a failure waits until then


@dataclass
class OutboxMessage:
    id: int
    incident_id: str
    sink: str
    step: str
    body: dict[str, Any]
    state: str  # pending | sent | dead
    attempts: int
    last_error: str | None
    created_at: float
    sent_at: float | None
    response: dict[str, Any] | None
    next_attempt_at: float = 0.0
    lease_owner: str | None = None  # the replica that claimed it last
    lease_until: float | None = None  # PostgreSQL: being sent, others wait until this
    # When an attempt that might have posted it began (recorded before the post; cleared by
    # mark_retry when the sink said it did not): a later attempt looks for it before posting.
    sending_at: float | None = None


@dataclass
class AcceptResult:
    incident_id: str | None  # None: a resolved notification for a group with no open incident
    created: bool
    new_alerts: int
    duplicates: int
    job_id: int | None



# Fields update_incident accepts, and whether each is stored as JSON.
_INCIDENT_FIELDS = {
    "status": False, "playbook": False, "verdict": True, "capture": True, "report": True,
    "resolved_at": False, "thread": True, "error": False, "evidence": True, "links": True,
    "attributed_at": False, "acknowledged": True, "preliminary": True,
}


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"), sort_keys=True)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class StoreBase:
    """The store's interface and the logic both back-ends share (see the module docstring).

    Every public method is one transaction and blocks; call it from asyncio with
    ``asyncio.to_thread``. Safe to share between threads. SQL is written once with ``?``
    placeholders; a back-end supplies transactions (``_tx``), the clock (``_now``), inserts that
    return the new id, its locking clauses and its claims.
    """

    backend = ""
    # Appended to a SELECT whose row the transaction then changes (SQLite locks the whole file).
    _for_update = ""
    # Breaks ties between incidents created in the same instant: insertion order.
    _insertion_order = "rowid"
    # What the driver raises when a unique index refuses a row.
    _unique_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, *, clock: Callable[[], float] | None, owner: str | None,
                 job_lease_s: float, message_lease_s: float) -> None:
        self._clock = clock
        self.owner = owner or default_owner()
        self.job_lease_s = float(job_lease_s)
        self.message_lease_s = float(message_lease_s)
        # How often the server renews the leases of the jobs its workers hold.
        self.lease_renew_s = self.job_lease_s / 4
        self._on_unavailable: Callable[[StoreUnavailable], None] = lambda e: None
        self._on_written: Callable[[], None] = lambda: None

    def watch(self, on_unavailable: Callable[[StoreUnavailable], None], on_written: Callable[[], None]) -> None:
        """Be told, from the thread that ran it, of every transaction that could not reach the
        database and of every write that committed: whichever operation meets a locked, full or
        vanished database first (intake, a worker, the deliverer, the probe), its owner knows at
        once. Callbacks must be quick and must not touch the store."""
        self._on_unavailable = on_unavailable
        self._on_written = on_written

    # -- what a back-end provides ----------------------------------------------------------

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _now(self, conn: Any) -> float:
        return self._clock()  # type: ignore[misc]

    def _insert(self, conn: Any, sql: str, args: Sequence[Any]) -> int | None:
        """Run an INSERT; the new row's id, or None when ON CONFLICT skipped it."""
        raise NotImplementedError

    def _lock_group(self, conn: Any, group_key: str) -> None:
        """Serialise ``accept`` for one alert group (SQLite's write lock already does)."""

    @staticmethod
    def _apply_migrations(conn: Any, migrations: dict[int, str], version: int, latest: int,
                          record: Callable[[int], object]) -> None:
        """Run the migrations from ``version`` up to ``latest`` statement by statement inside the
        caller's transaction (a script runner could commit first), recording each new version."""
        while version < latest:
            for statement in migrations[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            version += 1
            record(version)

    def _held_elsewhere(self, job_row: Any) -> bool:
        """True when another replica has taken this running job over (its lease lapsed here)."""
        return False

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> StoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- intake ----------------------------------------------------------------------------

    def accept(self, notification: NotificationLike, raw: bytes) -> AcceptResult:
        """Record one Alertmanager notification; open an incident and enqueue work as needed.

        Alerts already recorded for this group (same fingerprint, status and startsAt) are
        duplicates. New firing alerts open an incident (or join the open one) and enqueue an
        ``investigate`` job, unless one is already waiting (a storm of alerts for one group makes
        one investigation, not one per alert); a notification whose new alerts are all resolved enqueues a
        ``resolve`` job for the open incident once no alert of it is still firing.
        """
        with self._tx() as conn:
            return self._accept_in(conn, notification, raw, self._now(conn))

    def accept_batch(self, items: Sequence[tuple[NotificationLike, bytes]],
                     max_pending_jobs: int | None = None) -> list[AcceptResult | Exception]:
        """``accept`` for several notifications in one transaction (one commit, one fsync: the
        intake's group commit). Each gets its result, or the exception that refused it alone
        (its part rolled back to a savepoint; the others are kept). When ``max_pending_jobs`` or
        more jobs wait, every item is refused with ``Overloaded`` and nothing is stored.

        Items are taken in order within each alert group; groups are visited in key order, so
        two replicas' batches on PostgreSQL lock groups in the same order and cannot deadlock."""
        order = sorted(range(len(items)), key=lambda i: items[i][0].group_key)
        out: list[AcceptResult | Exception | None] = [None] * len(items)
        try:
            with self._tx() as conn:
                if max_pending_jobs is not None and self._pending_jobs(conn) >= max_pending_jobs:
                    return [Overloaded("too many incidents waiting; retry later") for _ in items]
                now = self._now(conn)
                for i in order:
                    out[i] = self._accept_in(conn, items[i][0], items[i][1], now)
            return out  # type: ignore[return-value]
        except self._item_errors:
            if len(items) == 1:
                return [sys.exc_info()[1]]  # type: ignore[list-item]
        # One item could not be stored (the whole transaction rolled back): again, each item behind
        # a savepoint, so only that one is refused. Rare, so the common path pays no savepoints.
        with self._tx() as conn:
            now = self._now(conn)
            for i in order:
                conn.execute("SAVEPOINT accept_one")
                try:
                    out[i] = self._accept_in(conn, items[i][0], items[i][1], now)
                except self._item_errors as e:
                    conn.execute("ROLLBACK TO SAVEPOINT accept_one")
                    out[i] = e
                conn.execute("RELEASE SAVEPOINT accept_one")
        return out  # type: ignore[return-value]

    # What refuses one notification of a batch rather than the whole transaction: a bug in its
    # data (a value the database will not store), never the database being away.
    _item_errors: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError)

    def _seen_events(self, conn: Any, group_key: str, fingerprints: Collection[str]) -> set[tuple[str, str, str]]:
        """The (fingerprint, status, startsAt) already recorded for these fingerprints of the
        group: one indexed statement per DEDUP_CHUNK fingerprints."""
        seen: set[tuple[str, str, str]] = set()
        fps = sorted(fingerprints)
        for i in range(0, len(fps), DEDUP_CHUNK):
            chunk = fps[i:i + DEDUP_CHUNK]
            rows = conn.execute(
                "SELECT fingerprint, status, starts_at FROM alert_events WHERE group_key=? AND fingerprint IN ("
                + ",".join("?" * len(chunk)) + ")", (group_key, *chunk)).fetchall()
            seen.update((r["fingerprint"], r["status"], r["starts_at"]) for r in rows)
        return seen

    def _accept_in(self, conn: Any, notification: NotificationLike, raw: bytes, now: float) -> AcceptResult:
        group_key = notification.group_key
        alerts = list(notification.alerts)
        self._lock_group(conn, group_key)

        # Linear: one lookup per chunk of fingerprints, then a set for the rest of the payload
        # (should Alertmanager ever repeat an alert within one notification).
        keys = [a.dedup_key() for a in alerts]
        seen = self._seen_events(conn, group_key, {k[0] for k in keys})
        new: list[tuple[AlertLike, tuple[str, str, str]]] = []
        duplicates = 0
        for alert, key in zip(alerts, keys):
            if key in seen:
                duplicates += 1
            else:
                seen.add(key)
                new.append((alert, key))
        new_firing = any(a.status == "firing" for a, _ in new)

        row = conn.execute("SELECT id FROM incidents WHERE group_key=? AND status='firing'"
                           + self._for_update, (group_key,)).fetchone()
        created = False
        if row is None:
            if not new_firing:
                # Resolved (or all duplicate) with nothing open: keep the payload, do no work.
                self._insert(conn, "INSERT INTO notifications (group_key, status, received_at, raw) VALUES (?,?,?,?)",
                             (group_key, notification.status, now, bytes(raw)))
                return AcceptResult(None, False, len(new), duplicates, None)
            incident_id = "inc-" + uuid.uuid4().hex[:10]
            conn.execute(
                "INSERT INTO incidents (id, group_key, status, created_at, updated_at) "
                "VALUES (?, ?, 'firing', ?, ?)", (incident_id, group_key, now, now))
            created = True
        else:
            incident_id = row["id"]
        notification_id = self._insert(
            conn, "INSERT INTO notifications (group_key, incident_id, status, received_at, raw) VALUES (?,?,?,?,?)",
            (group_key, incident_id, notification.status, now, bytes(raw)))

        if new:
            conn.executemany(
                "INSERT INTO alert_events (group_key, fingerprint, status, starts_at, "
                "incident_id, notification_id, received_at) VALUES (?,?,?,?,?,?,?)",
                [(group_key, *key, incident_id, notification_id, now) for _, key in new])
        # The latest state of each alert by fingerprint: a later startsAt, or for the same
        # startsAt resolved over firing; ties take the newer payload (a resend refreshes endsAt).
        # Duplicates take part too (they carry the group's current alerts), but the rank keeps a
        # late retry of an older state from overwriting a newer one.
        conn.executemany(
            "INSERT INTO incident_alerts (incident_id, fingerprint, starts, resolved, alert) VALUES (?,?,?,?,?) "
            "ON CONFLICT (incident_id, fingerprint) DO UPDATE SET starts=excluded.starts, "
            "resolved=excluded.resolved, alert=excluded.alert WHERE excluded.starts > incident_alerts.starts "
            "OR (excluded.starts = incident_alerts.starts AND excluded.resolved >= incident_alerts.resolved)",
            [(incident_id, a.fingerprint, a.starts_at.timestamp(), int(a.status == "resolved"),
              json.dumps(a.to_dict(), separators=(",", ":"))) for a in alerts])
        conn.execute(
            "UPDATE incidents SET labels=?, truncated_alerts=?, updated_at=? WHERE id=?",
            (_dumps(dict(notification.common_labels or {})),
             int(getattr(notification, "truncated_alerts", 0) or 0), now, incident_id))

        kind = None
        if new_firing:
            kind = "investigate"
        elif new:
            # Alertmanager marks a group resolved only when every alert in it is; checking our
            # merged view too covers a firing-status notification that resolves the last alert.
            still_firing = conn.execute("SELECT 1 AS firing FROM incident_alerts WHERE incident_id=? AND resolved=0 "
                                        "LIMIT 1", (incident_id,)).fetchone() is not None
            if notification.status == "resolved" or not still_firing:
                kind = "resolve"
        if kind == "investigate" and not created and conn.execute(
                "SELECT 1 AS waiting FROM jobs WHERE incident_id=? AND kind='investigate' "
                "AND state='pending'", (incident_id,)).fetchone():
            kind = None  # coalesced: the waiting investigation will read the merged alerts
        job_id = None
        if kind is not None:
            job_id = self._insert(
                conn, "INSERT INTO jobs (incident_id, kind, payload, state, created_at) "
                "VALUES (?, ?, ?, 'pending', ?)",
                (incident_id, kind, json.dumps(notification.to_dict(), separators=(",", ":")), now))
        return AcceptResult(incident_id, created, len(new), duplicates, job_id)

    # -- jobs ------------------------------------------------------------------------------

    def claim_job(self) -> Job | None:
        """Take the oldest pending job this replica may run: it becomes running (leased to this
        replica) and its attempt count goes up. None when there is none."""
        raise NotImplementedError

    def requeue_running(self) -> int:
        """At start-up: running jobs that no live process holds go back to pending. Returns how
        many. The attempt that was interrupted still counts, so a job that kills the process each
        time ends up failed rather than looping."""
        raise NotImplementedError

    def renew_leases(self, job_ids: Collection[int]) -> set[int]:
        """Extend this replica's leases on these running jobs; returns the ids it still holds."""
        raise NotImplementedError

    def finish_job(self, job_id: int) -> bool:
        """The job is done. False (and nothing changed) when another replica has taken it over."""
        with self._tx() as conn:
            row = self._require(conn, "jobs", job_id, lock=True)
            if self._held_elsewhere(row):
                return False
            conn.execute("UPDATE jobs SET state='done', finished_at=?, lease_until=NULL WHERE id=?",
                         (self._now(conn), job_id))
            return True

    def fail_job(self, job_id: int, error: str, retry: bool, delay_s: float = 0.0,
                 refund: bool = False) -> bool:
        """Record a failure; with ``retry`` the job is pending again (claimable after
        ``delay_s``) until it has had ``MAX_JOB_ATTEMPTS`` attempts, then (or without ``retry``)
        it is failed for good: a dead job, listed by ``dead_jobs``, until ``retry_job``.
        ``refund``: the failure was not the job's (the store went away under it), so the attempt
        does not count. False (and nothing changed) when another replica has taken the job over."""
        with self._tx() as conn:
            row = self._require(conn, "jobs", job_id, lock=True)
            if self._held_elsewhere(row):
                return False
            attempts = row["attempts"] - 1 if refund and row["attempts"] > 0 else row["attempts"]
            if retry and attempts < MAX_JOB_ATTEMPTS:
                conn.execute("UPDATE jobs SET state='pending', last_error=?, lease_owner=NULL, "
                             "lease_until=NULL, next_attempt_at=?, attempts=? WHERE id=?",
                             (error, self._now(conn) + max(0.0, float(delay_s)), attempts, job_id))
            else:
                conn.execute("UPDATE jobs SET state='failed', last_error=?, finished_at=?, "
                             "lease_until=NULL WHERE id=?", (error, self._now(conn), job_id))
            return True

    def pending_jobs(self) -> int:
        with self._tx(write=False) as conn:
            return self._pending_jobs(conn)

    @staticmethod
    def _pending_jobs(conn: Any) -> int:
        return conn.execute("SELECT COUNT(*) AS n FROM jobs WHERE state='pending'").fetchone()["n"]

    def dead_jobs(self, limit: int = 100) -> list[Job]:
        """Jobs failed for good (out of attempts, or not retryable), newest first."""
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE state='failed' ORDER BY id DESC LIMIT ?",
                                (int(limit),)).fetchall()
            return [job_from_row(r) for r in rows]

    def retry_job(self, job_id: int) -> bool:
        """Give a dead job a fresh set of attempts now; False when it is not dead."""
        with self._tx() as conn:
            self._require(conn, "jobs", job_id)
            n = conn.execute("UPDATE jobs SET state='pending', attempts=0, next_attempt_at=0, finished_at=NULL, "
                             "lease_owner=NULL, lease_until=NULL WHERE id=? AND state='failed'",
                             (job_id,)).rowcount
            return n == 1

    def get_job(self, job_id: int) -> Job | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return None if row is None else job_from_row(row)

    # -- incidents -------------------------------------------------------------------------

    def get_incident(self, incident_id: str) -> Incident | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM incidents WHERE id=?", (incident_id,)).fetchone()
            return None if row is None else self._incidents(conn, [row])[0]

    def incident_by_thread(self, sink: str, channel: str, ts: str) -> Incident | None:
        """The incident whose own thread (not one it borrowed) has this root in ``sink``."""
        raise NotImplementedError

    def list_incidents(self, limit: int = 100, status: str | None = None) -> list[Incident]:
        """Newest first."""
        if status is not None and status not in INCIDENT_STATUSES:
            raise ValueError(f"status must be one of {INCIDENT_STATUSES}, not {status!r}")
        sql = "SELECT * FROM incidents"
        args: list[Any] = []
        if status is not None:
            sql += " WHERE status=?"
            args.append(status)
        sql += f" ORDER BY created_at DESC, {self._insertion_order} DESC LIMIT ?"
        args.append(int(limit))
        with self._tx(write=False) as conn:
            return self._incidents(conn, conn.execute(sql, args).fetchall())

    def update_incident(self, incident_id: str, **fields: Any) -> Incident:
        """Set the pipeline's results on an incident and return it as stored.

        Fields: status, playbook, verdict, capture, report, resolved_at, thread, error, evidence, links,
        attributed_at, acknowledged, preliminary.
        ``thread`` is merged per sink (other sinks' entries are kept; a sink mapped to None is
        removed), so sinks can record their thread independently. Setting status 'resolved'
        without resolved_at stamps resolved_at with the current time.
        """
        unknown = sorted(set(fields) - set(_INCIDENT_FIELDS))
        if unknown:
            raise ValueError(f"update_incident: unknown field(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(_INCIDENT_FIELDS))}")
        if "status" in fields and fields["status"] not in INCIDENT_STATUSES:
            raise ValueError(f"status must be one of {INCIDENT_STATUSES}, "
                             f"not {fields['status']!r}")
        with self._tx() as conn:
            now = self._now(conn)
            row = self._require(conn, "incidents", incident_id, lock=True)
            if fields.get("status") == "resolved" and "resolved_at" not in fields \
                    and row["resolved_at"] is None:
                fields["resolved_at"] = now
            if "thread" in fields:
                thread = json.loads(row["thread"])
                for sink, ref in dict(fields["thread"] or {}).items():
                    if ref is None:
                        thread.pop(sink, None)
                    else:
                        thread[sink] = ref
                fields["thread"] = thread
            columns = [f"{name}=?" for name in fields] + ["updated_at=?"]
            values = [_dumps(v) if _INCIDENT_FIELDS[k] and v is not None else v
                      for k, v in fields.items()] + [now, incident_id]
            try:
                conn.execute(f"UPDATE incidents SET {', '.join(columns)} WHERE id=?", values)
            except self._unique_errors as exc:
                raise StoreError(f"cannot reopen {incident_id}: its group already has an open "
                                 f"incident ({exc})") from exc
            return self._incidents(conn, [conn.execute("SELECT * FROM incidents WHERE id=?",
                                                       (incident_id,)).fetchone()])[0]

    # -- outbox ----------------------------------------------------------------------------

    def enqueue_message(self, incident_id: str, sink: str, step: str,
                        body: dict[str, Any]) -> int | None:
        """Persist a message before sending it. Returns its id, or None when this incident's
        step was already enqueued for this sink (the existing message is left as it is)."""
        with self._tx() as conn:
            now = self._now(conn)
            return self._insert(
                conn, "INSERT INTO outbox (incident_id, sink, step, body, state, created_at, "
                "next_attempt_at) VALUES (?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT DO NOTHING",
                (incident_id, sink, step, _dumps(body), now, now))

    def pending_messages(self, sink: str | None = None, limit: int = 50) -> list[OutboxMessage]:
        """Messages due to be sent now, oldest first, whoever holds them (a read: no claim)."""
        with self._tx(write=False) as conn:
            sql = "SELECT * FROM outbox WHERE state='pending' AND next_attempt_at<=?"
            args: list[Any] = [self._now(conn)]
            if sink is not None:
                sql += " AND sink=?"
                args.append(sink)
            sql += " ORDER BY id LIMIT ?"
            args.append(int(limit))
            return [message_from_row(r) for r in conn.execute(sql, args).fetchall()]

    def claim_messages(self, limit: int = 100) -> list[OutboxMessage]:
        """Messages due now that this replica is to send, oldest first (see ``hold_message``)."""
        raise NotImplementedError

    def hold_message(self, message_id: int) -> bool:
        """Right before sending: take or extend this replica's lease on the message. False when
        it is no longer pending or another replica holds it; then it must not be sent."""
        raise NotImplementedError

    def get_message(self, message_id: int) -> OutboxMessage | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM outbox WHERE id=?", (message_id,)).fetchone()
            return None if row is None else message_from_row(row)

    def mark_sent(self, message_id: int, response: dict[str, Any]) -> None:
        """The sink delivered the message; ``response`` is kept (e.g. the chat message ts)."""
        with self._tx() as conn:
            self._require(conn, "outbox", message_id)
            conn.execute("UPDATE outbox SET state='sent', sent_at=?, response=?, lease_until=NULL "
                         "WHERE id=?", (self._now(conn), _dumps(response), message_id))

    def mark_sending(self, message_id: int) -> None:
        """Right before an attempt that might post the message: record that one began (kept from
        the first such attempt on), so that after a crash the next attempt first looks whether
        the message arrived (a thread root found again in the channel, never posted twice)."""
        with self._tx() as conn:
            self._require(conn, "outbox", message_id)
            conn.execute("UPDATE outbox SET sending_at=COALESCE(sending_at, ?) WHERE id=?",
                         (self._now(conn), message_id))

    def thread_root_state(self, incident_id: str, sink: str) -> str | None:
        """The state of the incident's root message for ``sink`` (None: none enqueued)."""
        found = self.step_message(incident_id, sink, "root")
        return None if found is None else found.state

    def step_message(self, incident_id: str, sink: str, step: str) -> OutboxMessage | None:
        """The incident's message for ``sink`` at ``step`` (its state and the sink's answer), if enqueued."""
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM outbox WHERE incident_id=? AND sink=? AND step=?",
                               (incident_id, sink, step)).fetchone()
            return None if row is None else message_from_row(row)

    def dead_messages(self, limit: int = 100) -> list[OutboxMessage]:
        """Messages given up on, newest first."""
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT * FROM outbox WHERE state='dead' ORDER BY id DESC LIMIT ?",
                                (int(limit),)).fetchall()
            return [message_from_row(r) for r in rows]

    def retry_message(self, message_id: int) -> bool:
        """Send a dead message again, now, with a fresh count of attempts; False when it is not
        dead. A dead thread root takes its thread's dead replies with it."""
        with self._tx() as conn:
            row = self._require(conn, "outbox", message_id)
            if row["state"] != "dead":
                return False
            now = self._now(conn)
            which = "id=?"
            args: tuple = (message_id,)
            if row["step"] == "root":
                which = "incident_id=? AND sink=?"
                args = (row["incident_id"], row["sink"])
            conn.execute("UPDATE outbox SET state='pending', attempts=0, next_attempt_at=?, lease_owner=NULL, "
                         f"lease_until=NULL WHERE state='dead' AND {which}", (now, *args))
            return True

    def mark_retry(self, message_id: int, error: str, delay_s: float) -> None:
        """A send failed: count the attempt and hold the message back for ``delay_s`` seconds
        (then any replica may send it)."""
        with self._tx() as conn:
            now = self._now(conn)
            self._require(conn, "outbox", message_id)
            conn.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=?, "
                         "lease_until=NULL WHERE id=?",
                         (error, now + max(0.0, float(delay_s)), message_id))

    def mark_dead(self, message_id: int, error: str) -> None:
        """Give up on a message (counting this last failed attempt); it is never sent."""
        with self._tx() as conn:
            self._require(conn, "outbox", message_id)
            conn.execute("UPDATE outbox SET state='dead', attempts=attempts+1, last_error=?, "
                         "lease_until=NULL WHERE id=?", (error, message_id))

    # -- health ----------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """A small real write (the health probe): raises StoreUnavailable while the database is
        locked by someone else, full, read-only or away."""
        with self._tx() as conn:
            conn.execute("UPDATE heartbeat SET at=? WHERE id=1", (self._now(conn),))

    def counts(self) -> dict[str, dict[str, int]]:
        """Incidents by status, jobs by state, messages by state (every known state present)."""
        out = {"incidents": dict.fromkeys(INCIDENT_STATUSES, 0),
               "jobs": dict.fromkeys(JOB_STATES, 0),
               "messages": dict.fromkeys(MESSAGE_STATES, 0)}
        with self._tx(write=False) as conn:
            for key, sql in (("incidents", "SELECT status AS k, COUNT(*) AS n FROM incidents GROUP BY status"),
                             ("jobs", "SELECT state AS k, COUNT(*) AS n FROM jobs GROUP BY state"),
                             ("messages", "SELECT state AS k, COUNT(*) AS n FROM outbox GROUP BY state")):
                for row in conn.execute(sql).fetchall():
                    out[key][row["k"]] = row["n"]
        return out

    # -- helpers ---------------------------------------------------------------------------

    def _incidents(self, conn: Any, rows: Sequence[Any]) -> list[Incident]:
        """Incident rows with their alerts (latest state per fingerprint, first seen first)."""
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        alerts: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for i in range(0, len(ids), DEDUP_CHUNK):
            chunk = ids[i:i + DEDUP_CHUNK]
            for a in conn.execute("SELECT incident_id, alert FROM incident_alerts WHERE incident_id IN ("
                                  + ",".join("?" * len(chunk)) + ") ORDER BY seq", chunk).fetchall():
                alerts[a["incident_id"]].append(json.loads(a["alert"]))
        return [incident_from_row(r, alerts[r["id"]]) for r in rows]

    def _require(self, conn: Any, table: str, key: Any, lock: bool = False) -> Any:
        row = conn.execute(f"SELECT * FROM {table} WHERE id=?" + (self._for_update if lock else ""),
                           (key,)).fetchone()
        if row is None:
            what = {"jobs": "job", "incidents": "incident", "outbox": "outbox message"}[table]
            raise NotFound(f"no {what} with id {key!r}")
        return row


def incident_from_row(row: Any, alerts: list[dict[str, Any]]) -> Incident:
    return Incident(
        id=row["id"], group_key=row["group_key"], status=row["status"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        resolved_at=row["resolved_at"], labels=json.loads(row["labels"]),
        alerts=alerts, playbook=row["playbook"],
        verdict=_loads(row["verdict"]), capture=_loads(row["capture"]),
        report=_loads(row["report"]), thread=json.loads(row["thread"]), error=row["error"],
        evidence=_loads(row["evidence"]) or {}, links=_loads(row["links"]) or [],
        attributed_at=row["attributed_at"], acknowledged=_loads(row["acknowledged"]),
        truncated_alerts=row["truncated_alerts"] or 0, preliminary=_loads(row["preliminary"]))


def job_from_row(row: Any) -> Job:
    return Job(id=row["id"], incident_id=row["incident_id"], kind=row["kind"],
               payload=json.loads(row["payload"]), state=row["state"], attempts=row["attempts"],
               last_error=row["last_error"], created_at=row["created_at"],
               claimed_at=row["claimed_at"], finished_at=row["finished_at"],
               lease_owner=row["lease_owner"], lease_until=row["lease_until"],
               next_attempt_at=row["next_attempt_at"] or 0.0)


def message_from_row(row: Any) -> OutboxMessage:
    return OutboxMessage(id=row["id"], incident_id=row["incident_id"], sink=row["sink"],
                         step=row["step"], body=json.loads(row["body"]), state=row["state"],
                         attempts=row["attempts"], last_error=row["last_error"],
                         created_at=row["created_at"], sent_at=row["sent_at"],
                         response=_loads(row["response"]),
                         next_attempt_at=row["next_attempt_at"],
                         lease_owner=row["lease_owner"], lease_until=row["lease_until"],
                         sending_at=row["sending_at"])
