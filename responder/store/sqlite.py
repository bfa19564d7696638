"""The incident store on SQLite: one file under the data directory, one responder process.

WAL journal, ``synchronous=FULL``, every public method one transaction, so anything a method has
returned is on disk; one connection (``check_same_thread=False``) serialised by a lock. A job or
message belongs to the one process there is, so claims take no lease that could expire, and
``requeue_running`` at start takes back every job left running. The logic both back-ends share
is in ``responder.store.base``.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from responder.store.base import (
    JOB_LEASE_S,
    MAX_JOB_ATTEMPTS,
    MESSAGE_LEASE_S,
    Incident,
    Job,
    OutboxMessage,
    StoreBase,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    _job,
)

SCHEMA_VERSION = 5  # PostgreSQL counts its own (postgres.PG_SCHEMA_VERSION)
# SQLite: how long a transaction waits for a write lock another process holds.
BUSY_TIMEOUT_S = 5.0

_SCHEMA_V1 = """
CREATE TABLE notifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    group_key    TEXT NOT NULL,
    incident_id  TEXT,
    status       TEXT NOT NULL,
    received_at  REAL NOT NULL,
    raw          BLOB NOT NULL
);
CREATE TABLE incidents (
    id           TEXT PRIMARY KEY,
    group_key    TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    resolved_at  REAL,
    labels       TEXT NOT NULL DEFAULT '{}',
    alerts       TEXT NOT NULL DEFAULT '{}',
    playbook     TEXT,
    verdict      TEXT,
    capture      TEXT,
    report       TEXT,
    thread       TEXT NOT NULL DEFAULT '{}',
    error        TEXT
);
-- One open incident per alert group.
CREATE UNIQUE INDEX incidents_open_group ON incidents (group_key) WHERE status = 'firing';
CREATE INDEX incidents_created ON incidents (created_at);
CREATE TABLE alert_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    group_key        TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    status           TEXT NOT NULL,
    starts_at        TEXT NOT NULL,
    incident_id      TEXT REFERENCES incidents (id),
    notification_id  INTEGER NOT NULL REFERENCES notifications (id),
    received_at      REAL NOT NULL,
    UNIQUE (group_key, fingerprint, status, starts_at)
);
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   REAL NOT NULL,
    claimed_at   REAL,
    finished_at  REAL
);
CREATE INDEX jobs_state ON jobs (state, id);
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id      TEXT NOT NULL REFERENCES incidents (id),
    sink             TEXT NOT NULL,
    step             TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       REAL NOT NULL,
    next_attempt_at  REAL NOT NULL,
    sent_at          REAL,
    response         TEXT,
    UNIQUE (incident_id, sink, step)
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at, id);
"""

# Migrations from version N to N+1, run in order on open. Version 0 is an empty file.
# v2: the application's own evidence (Prometheus, traces), the links a report carries, and when
# the verdict was reached (detection time is measured to it).
_SCHEMA_V2 = """
ALTER TABLE incidents ADD COLUMN evidence TEXT;
ALTER TABLE incidents ADD COLUMN links TEXT;
ALTER TABLE incidents ADD COLUMN attributed_at REAL
"""

# v3: who acknowledged the incident (a chat button), shown on the thread's root.
_SCHEMA_V3 = """
ALTER TABLE incidents ADD COLUMN acknowledged TEXT
"""

# v4: who claimed a job or message (the lease's expiry stays empty: one process, no takeover).
_SCHEMA_V4 = """
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE outbox ADD COLUMN lease_until REAL
"""

# v5: a failed job's backoff; a message's in-flight mark (an attempt that may have posted it);
# how many alerts Alertmanager truncated; a one-row table the health probe writes to; an
# incident's alerts as rows (latest state per fingerprint) instead of one JSON document that each
# notification had to read and rewrite whole (quadratic in a storm).
_SCHEMA_V5 = """
ALTER TABLE jobs ADD COLUMN next_attempt_at REAL NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN sending_at REAL;
ALTER TABLE incidents ADD COLUMN truncated_alerts INTEGER NOT NULL DEFAULT 0;
CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
INSERT INTO heartbeat (id, at) VALUES (1, 0);
CREATE TABLE incident_alerts (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    fingerprint  TEXT NOT NULL,
    starts       REAL NOT NULL,
    resolved     INTEGER NOT NULL,
    alert        TEXT NOT NULL,
    UNIQUE (incident_id, fingerprint)
);
INSERT INTO incident_alerts (incident_id, fingerprint, starts, resolved, alert)
    SELECT i.id, j.key, json_extract(j.value, '$.starts'), json_extract(j.value, '$.resolved'),
           json_extract(j.value, '$.alert')
    FROM incidents i, json_each(i.alerts) j;
UPDATE incidents SET alerts = '{}'
"""

_MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4, 4: _SCHEMA_V5}


class IncidentStore(StoreBase):
    """The SQLite store: incidents, their alerts, the job queue and the chat outbox in one file,
    for one responder process (see the module docstring)."""

    backend = "sqlite"
    _unique_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 owner: str | None = None, job_lease_s: float = JOB_LEASE_S,
                 message_lease_s: float = MESSAGE_LEASE_S) -> None:
        super().__init__(clock=clock, owner=owner, job_lease_s=job_lease_s,
                         message_lease_s=message_lease_s)
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are opened explicitly by _tx, never implicitly.
        # The busy timeout bounds how long a transaction waits for another process's write lock
        # before it fails as StoreUnavailable (the webhook then answers 503 and is retried).
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                               timeout=BUSY_TIMEOUT_S)
        try:
            conn.row_factory = sqlite3.Row
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.Error as e:  # read-only directory, not a database, locked
                raise StoreError(f"{self.path}: {e}") from None
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); "
                                 "put the data directory on a local file system")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn: sqlite3.Connection | None = conn
            self._migrate()
        except BaseException:
            conn.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> IncidentStore:
        return self

    @property
    def schema_version(self) -> int:
        with self._tx(write=False) as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreClosed(f"incident store {self.path} is closed")
            try:
                # IMMEDIATE takes the write lock up front, so a read-then-write never has to upgrade.
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                    conn.execute("COMMIT")
                    if write:
                        self._on_written()
                except BaseException:
                    # Also after a failed COMMIT (disk full, I/O error), which can leave it open.
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:  # the file is gone or broken: the original error says why
                            pass
                    raise
            except sqlite3.IntegrityError:
                raise  # a constraint: the caller's own data, not the database being away
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as e:
                # Locked by another process past the busy timeout, disk full, read-only, I/O
                # error: nothing of the transaction was written.
                unavailable = StoreUnavailable(f"SQLite {self.path}: {e}")
                self._on_unavailable(unavailable)
                raise unavailable from e

    def _insert(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int | None:
        cur = conn.execute(sql, args)
        return cur.lastrowid if cur.rowcount == 1 else None

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}, newer than this "
                                 f"responder's {SCHEMA_VERSION}; upgrade the responder")
            self._apply_migrations(conn, _MIGRATIONS, version, SCHEMA_VERSION,
                                   lambda v: conn.execute(f"PRAGMA user_version = {v:d}"))

    # -- jobs: one process, so a claim is for good until this process finishes or restarts ---

    def claim_job(self) -> Job | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE state='pending' AND next_attempt_at<=? ORDER BY id LIMIT 1",
                (self._now(conn),)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET state='running', attempts=attempts+1, claimed_at=?, "
                         "lease_owner=? WHERE id=?", (self._now(conn), self.owner, row["id"]))
            return _job(conn.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())

    def requeue_running(self) -> int:
        """At start-up: every job left running was left by a process that is gone (the file
        belongs to one process), so all go back to pending; see ``StoreBase.requeue_running``."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET state='failed', last_error='interrupted; out of attempts', "
                "finished_at=? WHERE state='running' AND attempts>=?",
                (self._now(conn), MAX_JOB_ATTEMPTS))
            return conn.execute("UPDATE jobs SET state='pending', last_error='interrupted', "
                                "lease_owner=NULL WHERE state='running'").rowcount

    def renew_leases(self, job_ids: Collection[int]) -> set[int]:
        ids = sorted({int(i) for i in job_ids})
        if not ids:
            return set()
        with self._tx(write=False) as conn:
            marks = ",".join("?" * len(ids))
            rows = conn.execute(f"SELECT id FROM jobs WHERE state='running' AND id IN ({marks})",
                                ids).fetchall()
            return {r["id"] for r in rows}

    # -- outbox: one sender ----------------------------------------------------------------

    def claim_messages(self, limit: int = 100) -> list[OutboxMessage]:
        return self.pending_messages(None, limit)

    def hold_message(self, message_id: int) -> bool:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT state FROM outbox WHERE id=?", (message_id,)).fetchone()
            return row is not None and row["state"] == "pending"

    # -- incidents -------------------------------------------------------------------------

    def incident_by_thread(self, sink: str, channel: str, ts: str) -> Incident | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM incidents WHERE json_extract(thread, '$.' || ? || '.channel') = ? "
                "AND json_extract(thread, '$.' || ? || '.ts') = ? "
                "AND json_extract(thread, '$.' || ? || '.borrowed_from') IS NULL ORDER BY created_at LIMIT 1",
                (sink, channel, sink, ts, sink)).fetchone()
            return self._incidents(conn, [row])[0] if row else None


