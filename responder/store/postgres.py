"""The incident store on PostgreSQL, for two or more responder replicas sharing one database.

Same interface, tables and transaction semantics as the SQLite store (``responder.store``), with
what several processes need on top:

- ``accept`` serialises per alert group with a transaction-scoped advisory lock, so the same
  alert sent to two replicas at once is recorded once and opens one incident.
- One replica per incident: ``claim_job`` locks the job and its incident row (``FOR UPDATE SKIP
  LOCKED``), re-checks that no other replica holds a live lease on a running job of that incident,
  and leases the job to this replica (``lease_owner``, ``lease_until``). The server renews the
  leases of the jobs its workers hold every ``lease_renew_s``; a job whose lease lapsed (its
  replica died or lost the database for ``JOB_LEASE_S``) goes back to pending at the next claim
  and is taken over by whoever claims it, counting the attempt. A replica that comes back to a
  job it lost gets False from ``finish_job``/``fail_job`` and changes nothing.
- ``requeue_running`` at start takes back only jobs this replica (same owner name) left running
  and jobs whose lease lapsed, never a live replica's.
- The outbox: ``claim_messages`` leases due messages to this replica, whole threads at a time
  (no other replica is then sending that incident's messages for that sink), and
  ``hold_message`` re-takes the lease right before each send, so a message is posted by one
  replica; the outbox key (incident, sink, step) still makes each step one message.

Why a row lease in the database and not a Kubernetes Lease object: the lease lives in the same
row and transaction as the state it guards, so a claim and its lease cannot disagree; the
responder needs no RBAC on ``coordination.k8s.io``; and it works the same off-cluster.

Times in leases come from the database's clock (one clock for all replicas), unless a ``clock``
is given (tests). Connections: psycopg_pool's pool, one connection per transaction, autocommit outside
explicit transactions (READ COMMITTED, row and advisory locks where a read decides a write). A
dropped connection is discarded; the call raises ``StoreUnavailable`` and the caller retries.
Give the responder a database (or a ``search_path`` schema) of its own: the table names are plain.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

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
    message_from_row,
)

log = logging.getLogger(__name__)

POOL_SIZE = 8
CONNECT_TIMEOUT_S = 10
# Advisory lock key held while migrating, so replicas starting together migrate once.
_MIGRATION_LOCK = 0x6C6C6D736C6F
# How many candidates claim_job passes over (another replica holds their incident) in one call.
_CLAIM_SCAN = 50

# Migrations from version N to N+1, as SQLite's but in PostgreSQL's types and numbered apart.
_PG_MIGRATIONS = load_migrations("postgres")
PG_SCHEMA_VERSION = len(_PG_MIGRATIONS)

# A running job whose lease has lapsed (NULL: never leased) may be taken back by anyone.
_LAPSED = "(lease_until IS NULL OR lease_until <= ?)"


def describe(url: str) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "an unparsable database URL"
    host = str(info.get("host") or "localhost")  # libpq values are strings; psycopg types them str | int
    if host.startswith("/"):
        host = "socket " + host
    return f"{info.get('user') or '(default user)'}@{host}:{info.get('port') or 5432}/{info.get('dbname') or '(default)'}"


def _check_url(url: str) -> None:
    """StoreError for a URL libpq cannot parse or whose port is not a port (the message never
    repeats the URL, which may hold a password)."""
    expected = "expected postgresql://user:password@host:port/dbname"
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error as e:
        raise StoreError(f"not a PostgreSQL URL ({_first_line(e).replace(url, '...')}); {expected}") from None
    for port in str(info.get("port") or "5432").split(","):
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise StoreError(f"not a PostgreSQL URL (port {port!r}); {expected}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Conn:
    """A psycopg connection that takes the store's ``?`` placeholders."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[DictRow]) -> None:
        self.raw = raw

    def execute(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[DictRow]:
        return self.raw.execute(sql.replace("?", "%s"), tuple(args) or None)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])


class PostgresIncidentStore(StoreBase):
    """Incidents, their alerts, the job queue and the chat outbox in one PostgreSQL database,
    shared by the responder's replicas (see the module docstring).

    ``url``: ``postgresql://user:password@host:port/dbname`` (libpq's URI or key=value forms).
    ``owner``: this replica's name in leases (default: host name and pid). Raises StoreError
    (StoreUnavailable when the server cannot be reached) naming the database, never the password.
    """

    backend = "postgresql"
    _for_update = " FOR UPDATE"
    _insertion_order = "seq"
    _unique_errors = (psycopg.errors.UniqueViolation,)
    # A value PostgreSQL will not store (a NUL in text) refuses one notification of a batch.
    _item_errors = (ValueError, TypeError, KeyError, psycopg.errors.DataError)

    def __init__(self, url: str, *, clock: Callable[[], float] | None = None,
                 owner: str | None = None, job_lease_s: float = JOB_LEASE_S,
                 message_lease_s: float = MESSAGE_LEASE_S, pool_size: int = POOL_SIZE,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        super().__init__(clock=clock, owner=owner, job_lease_s=job_lease_s,
                         message_lease_s=message_lease_s)
        self.where = describe(url)
        _check_url(url)
        timeout = max(1, int(connect_timeout_s))
        try:  # one connection first, so that an unreachable server is said as libpq says it
            psycopg.connect(url, connect_timeout=timeout).close()
        except psycopg.Error as e:
            raise StoreUnavailable(f"PostgreSQL at {self.where}: {_first_line(e)}") from None
        # Connections are checked when taken from the pool (the server may have closed an idle
        # one); a transaction waits at most ``connect_timeout_s`` for one, then StoreUnavailable.
        # row_factory=dict_row below: every row is a dict
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] | None = ConnectionPool(
            url, min_size=1, max_size=pool_size, timeout=connect_timeout_s, open=True, name="llmslo-store",
            check=ConnectionPool.check_connection,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": timeout,
                    "application_name": "llmslo-responder"})
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> PostgresIncidentStore:
        return self

    @property
    def schema_version(self) -> int:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT version FROM llmslo_schema").fetchone()
            assert row is not None  # _migrate wrote it
            return row["version"]

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[_Conn]:
        pool = self._pool
        if pool is None:
            raise StoreClosed(f"incident store on {self.where} is closed")
        try:
            with pool.connection() as raw, raw.transaction():
                yield _Conn(raw)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            unavailable = StoreUnavailable(f"PostgreSQL at {self.where}: {_first_line(e)}")
            self._on_unavailable(unavailable)
            raise unavailable from e
        if write:
            self._on_written()

    def _now(self, conn: _Conn) -> float:
        if self._clock is not None:
            return self._clock()
        row = conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now").fetchone()
        assert row is not None  # a SELECT without FROM returns one row
        return row["now"]

    def _insert(self, conn: _Conn, sql: str, args: Sequence[Any]) -> int | None:
        row = conn.execute(sql + " RETURNING id", args).fetchone()
        return None if row is None else row["id"]

    def _lock_group(self, conn: _Conn, group_key: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (group_key,))

    def _held_elsewhere(self, job_row: Any) -> bool:
        return job_row["state"] == "running" and job_row["lease_owner"] not in (None, self.owner)

    def _migrate(self) -> None:
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?::bigint)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS llmslo_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM llmslo_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO llmslo_schema (version) VALUES (0)")
                version = 0
            else:
                version = row["version"]
            if version > PG_SCHEMA_VERSION:
                raise StoreError(f"the database at {self.where} has schema version {version}, newer "
                                 f"than this responder's {PG_SCHEMA_VERSION}; upgrade the responder")
            self._apply_migrations(conn, _PG_MIGRATIONS, version, PG_SCHEMA_VERSION,
                                   lambda v: conn.execute("UPDATE llmslo_schema SET version=?", (v,)))

    # -- jobs ------------------------------------------------------------------------------

    def claim_job(self) -> Job | None:
        with self._tx() as conn:
            now = self._now(conn)
            self._take_back_lapsed(conn, now)
            skipped: list[int] = []
            for _ in range(_CLAIM_SCAN):
                # Locking the incident row too makes two replicas' claims for one incident take
                # turns; SKIP LOCKED passes over an incident another claim is deciding right now.
                row = conn.execute(
                    "SELECT j.id, j.incident_id FROM jobs j JOIN incidents i ON i.id = j.incident_id "
                    "WHERE j.state='pending' AND j.next_attempt_at<=? AND j.id <> ALL(?::bigint[]) "
                    "ORDER BY j.id LIMIT 1 FOR UPDATE OF j, i SKIP LOCKED", (now, skipped)).fetchone()
                if row is None:
                    return None
                # A fresh snapshot, taken with the incident locked: sees a claim by another
                # replica that committed while this statement waited.
                if self._foreign_live_job(conn, row["incident_id"], now):
                    skipped.append(row["id"])
                    continue
                conn.execute(
                    "UPDATE jobs SET state='running', attempts=attempts+1, claimed_at=?, "
                    "lease_owner=?, lease_until=? WHERE id=?",
                    (now, self.owner, now + self.job_lease_s, row["id"]))
                return job_from_row(conn.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())
            return None

    def _foreign_live_job(self, conn: _Conn, incident_id: str, now: float) -> bool:
        return conn.execute(
            "SELECT 1 AS busy FROM jobs WHERE incident_id=? AND state='running' "
            "AND lease_owner IS DISTINCT FROM ? AND lease_until > ? LIMIT 1",
            (incident_id, self.owner, now)).fetchone() is not None

    def _take_back_lapsed(self, conn: _Conn, now: float) -> int:
        """Running jobs whose lease lapsed go back to pending (failed when out of attempts).
        Rows another transaction has locked are skipped (never waited for), so claims cannot
        deadlock with each other or with a renewal; the next claim looks again."""
        rows = self._interrupt(conn, now, _LAPSED, (now,),
                               "'interrupted: the lease of ' || COALESCE(lease_owner, 'unknown') || ' lapsed'")
        if rows:
            log.info("event=jobs_taken_back reason=lease_lapsed jobs=%s owner=%s",
                     ",".join(f"{r['id']}:{r['state']}" for r in rows), self.owner)
        return sum(r["state"] == "pending" for r in rows)

    @staticmethod
    def _interrupt(conn: _Conn, now: float, which: str, which_args: tuple, error: str,
                   clear_owner: bool = False) -> list[Any]:
        """Running jobs matching ``which`` (SQL over ``jobs``) back to pending, or failed when out
        of attempts, with ``error`` (an SQL expression) as their last error; locked rows skipped."""
        return conn.execute(
            "UPDATE jobs SET lease_until=NULL, " + ("lease_owner=NULL, " if clear_owner else "")
            + "state = CASE WHEN attempts >= ? THEN 'failed' ELSE 'pending' END, "
            "finished_at = CASE WHEN attempts >= ? THEN ? ELSE finished_at END, "
            "last_error = " + error + " || CASE WHEN attempts >= ? THEN '; out of attempts' ELSE '' END "
            "WHERE id IN (SELECT id FROM jobs WHERE state='running' AND " + which
            + " FOR UPDATE SKIP LOCKED) RETURNING id, state",
            (MAX_JOB_ATTEMPTS, MAX_JOB_ATTEMPTS, now, MAX_JOB_ATTEMPTS, *which_args)).fetchall()

    def requeue_running(self) -> int:
        """At start-up: jobs this replica left running (it restarted under the same owner name)
        go back to pending, and so do jobs whose lease lapsed; a live replica's are left alone."""
        with self._tx() as conn:
            now = self._now(conn)
            rows = self._interrupt(conn, now, "(lease_owner=? OR " + _LAPSED + ")", (self.owner, now),
                                   "'interrupted'", clear_owner=True)
            return sum(r["state"] == "pending" for r in rows)

    def renew_leases(self, job_ids: Collection[int]) -> set[int]:
        ids = sorted({int(i) for i in job_ids})
        if not ids:
            return set()
        with self._tx() as conn:
            now = self._now(conn)
            rows = conn.execute(
                "UPDATE jobs SET lease_until=? WHERE id = ANY(?::bigint[]) AND state='running' "
                "AND lease_owner=? RETURNING id", (now + self.job_lease_s, ids, self.owner)).fetchall()
            return {r["id"] for r in rows}

    # -- outbox ----------------------------------------------------------------------------

    def claim_messages(self, limit: int = 100) -> list[OutboxMessage]:
        """Due messages leased to this replica for ``message_lease_s``, oldest first. A thread
        (incident, sink) with a message another replica holds is left to that replica, so its
        order is kept."""
        with self._tx() as conn:
            now = self._now(conn)
            rows = conn.execute(
                "SELECT o.id, o.incident_id, o.sink FROM outbox o JOIN incidents i ON i.id = o.incident_id "
                "WHERE o.state='pending' AND o.next_attempt_at<=? "
                "AND (o.lease_owner=? OR o.lease_until IS NULL OR o.lease_until<=?) "
                "ORDER BY o.id LIMIT ? FOR UPDATE OF o, i SKIP LOCKED",
                (now, self.owner, now, int(limit))).fetchall()
            if not rows:
                return []
            # Checked with the incidents locked, in a fresh snapshot (see claim_job).
            busy = {(r["incident_id"], r["sink"]) for r in conn.execute(
                "SELECT DISTINCT incident_id, sink FROM outbox WHERE state='pending' "
                "AND incident_id = ANY(?::text[]) AND lease_owner IS DISTINCT FROM ? AND lease_until>?",
                (sorted({r["incident_id"] for r in rows}), self.owner, now)).fetchall()}
            ids = [r["id"] for r in rows if (r["incident_id"], r["sink"]) not in busy]
            if not ids:
                return []
            claimed = conn.execute(
                "UPDATE outbox SET lease_owner=?, lease_until=? WHERE id = ANY(?::bigint[]) RETURNING *",
                (self.owner, now + self.message_lease_s, ids)).fetchall()
            return sorted((message_from_row(r) for r in claimed), key=lambda m: m.id)

    def hold_message(self, message_id: int) -> bool:
        with self._tx() as conn:
            now = self._now(conn)
            row = conn.execute(
                "UPDATE outbox SET lease_owner=?, lease_until=? WHERE id=? AND state='pending' "
                "AND (lease_owner=? OR lease_until IS NULL OR lease_until<=?) RETURNING id",
                (self.owner, now + self.message_lease_s, message_id, self.owner, now)).fetchone()
            return row is not None

    # -- incidents -------------------------------------------------------------------------

    def incident_by_thread(self, sink: str, channel: str, ts: str) -> Incident | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM incidents WHERE (thread::jsonb -> ?::text ->> 'channel') = ? "
                "AND (thread::jsonb -> ?::text ->> 'ts') = ? "
                "AND (thread::jsonb -> ?::text ->> 'borrowed_from') IS NULL "
                "ORDER BY created_at LIMIT 1", (sink, channel, sink, ts, sink)).fetchone()
            return self._incidents(conn, [row])[0] if row else None
