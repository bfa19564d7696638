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
    job_from_row,
    load_migrations,
)

# SQLite: how long a transaction waits for a write lock another process holds.
BUSY_TIMEOUT_S = 5.0

# Migrations from version N to N+1, run in order on open (version 0 is an empty file).
_MIGRATIONS = load_migrations("sqlite")
SCHEMA_VERSION = len(_MIGRATIONS)  # PostgreSQL counts its own (postgres.PG_SCHEMA_VERSION)


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
            return job_from_row(conn.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())

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


