"""The lab's retrieval backend: a real PostgreSQL server on loopback, with a temporary data
directory, seeded with the RAG service's document chunks, and retrieval faults that act *inside
the database* (so the kernel sees a slow or failing backend behind a healthy socket).

What it owns:
- :class:`LabPostgres`: ``initdb`` and ``postgres`` from the distribution's server binaries, run
  as the ``postgres`` OS user when started by root (the server refuses to run as root), listening
  on 127.0.0.1 at a free port with its Unix socket inside the temporary directory. Database
  ``rag``: table ``chunks`` (~200 text chunks, a stored ``tsvector`` with a GIN index), table
  ``lab_faults`` (one row: ``delay_ms``, ``error_fraction``) and the SQL function
  ``lab_retrieve(q text, k int)``, which reads ``lab_faults`` on every call, sleeps
  (``pg_sleep``) for the delay, raises SQLSTATE ``XX000`` for that fraction of calls, and
  otherwise returns the ``k`` best full-text matches. The service connects as role ``lab``
  (trust on 127.0.0.1, read-only); the lab changes faults as the superuser over the socket.
- Cleanup however a run ends: ``stop()`` (fast shutdown, directory removed), an ``atexit`` safety
  net, and :func:`sweep_stale`, which stops the servers and removes the directories of runs whose
  owning process is gone (SIGKILL). Directories are ``$TMPDIR/llmslo-lab-pg-<owner pid>-*``:
  the data directory lives under the system temp directory rather than the caller's work dir
  because the ``postgres`` user must be able to reach it (pytest's temp dirs are root-only).

Settings are a lab's, not production's: no fsync, small buffers, no autovacuum, no JIT.
"""
from __future__ import annotations

import atexit
import glob
import logging
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from common.net import free_port

log = logging.getLogger(__name__)

DIR_PREFIX = "llmslo-lab-pg-"
DATABASE = "rag"
ROLE = "lab"  # what the RAG service connects as
SUPERUSER = "postgres"
INJECTED_SQLSTATE = "XX000"  # internal_error: what a failing backend answers
CHUNKS = 200


class PostgresError(RuntimeError):
    """The lab's PostgreSQL could not be found, started, seeded or changed; the message says why."""


def server_bindir() -> Path:
    """The directory holding ``initdb``, ``postgres`` and ``psql``: ``pg_config --bindir`` when it
    has the server (pg_config may come from a newer client-only libpq), else the newest
    ``/usr/lib/postgresql/*/bin`` (Debian's layout), else wherever ``initdb`` is on PATH."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    except OSError:
        pass
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        def version(p: str) -> tuple:
            v = Path(p).parent.parent.name
            return tuple(int(x) for x in v.split(".") if x.isdigit())
        return Path(max(found, key=version)).parent
    which = shutil.which("initdb")
    if which:
        return Path(which).parent
    raise PostgresError("PostgreSQL server binaries (initdb, postgres) not found: install the distribution's "
                        "postgresql package (scripts/setup.sh does)")




def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


class LabPostgres:
    """A throwaway PostgreSQL for one lab run. ``start()`` returns self; ``stop()`` is idempotent.

    ``work_dir`` receives the server log (``postgres.log``); the cluster itself goes to a
    temporary directory the ``postgres`` user can reach (see the module docstring)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.port = 0
        self.base: Path | None = None  # temp dir: data/ and sock/
        self.proc: subprocess.Popen | None = None
        self.log_path = self.work_dir / "postgres.log"
        self._log: BinaryIO | None = None
        self._bindir: Path | None = None
        self._user: tuple[int, int] | None = None  # (uid, gid) to run the server as; None: as we are

    @property
    def dsn(self) -> str:
        """What the RAG service connects with: role ``lab`` over TCP on loopback."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def socket_dir(self) -> Path:
        assert self.base is not None, "not started"
        return self.base / "sock"

    @property
    def data_dir(self) -> Path:
        assert self.base is not None, "not started"
        return self.base / "data"

    def start(self) -> LabPostgres:
        sweep_stale()
        self._bindir = server_bindir()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.base = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        atexit.register(self.stop)
        try:
            if os.geteuid() == 0:
                pw = pwd.getpwnam(SUPERUSER)  # KeyError: no such user
                self._user = (pw.pw_uid, pw.pw_gid)
                os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chmod(self.base, 0o700)
            self._as_server_user(["mkdir", "-m", "700", str(self.socket_dir)])
            self._as_server_user([str(self._bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                                  "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            # Superuser only over the socket; the service's role only over loopback TCP.
            hba = f"local all all trust\nhost {DATABASE} {ROLE} 127.0.0.1/32 trust\n"
            self._as_server_user(["sh", "-c", 'cat > "$1"', "sh", str(self.data_dir / "pg_hba.conf")], stdin=hba)
            for _ in range(3):  # the free port may be taken between probing and binding
                self.port = free_port()
                if self._launch():
                    break
            else:
                raise PostgresError(f"postgres did not start after 3 attempts; see {self.log_path}")
            self._seed()
        except KeyError:
            self.stop()
            raise PostgresError("no 'postgres' OS user to run the server as (PostgreSQL refuses to run as "
                                "root): install the postgresql package, which creates it") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _as_server_user(self, argv: list[str], stdin: str | None = None, timeout: float = 60) -> None:
        kw: dict[str, Any] = {}
        if self._user is not None:
            kw = {"user": self._user[0], "group": self._user[1], "extra_groups": []}
        r = subprocess.run(argv, input=stdin, text=True, capture_output=True, timeout=timeout, check=False,
                           cwd=self.base, env=self._env(), **kw)
        if self._log:
            self._log.write((r.stdout + r.stderr).encode())
            self._log.flush()
        if r.returncode != 0:
            raise PostgresError(f"{Path(argv[0]).name} failed ({r.returncode}): {r.stderr.strip()[-500:]}")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _launch(self) -> bool:
        """Start the postmaster on ``self.port``; True once it accepts connections, False if it
        exited (the port was taken)."""
        assert self._bindir is not None, "not started"
        kw: dict[str, Any] = {}
        if self._user is not None:
            kw = {"user": self._user[0], "group": self._user[1], "extra_groups": []}
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.socket_dir),
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "16MB",
            "max_connections": "50", "autovacuum": "off", "jit": "off", "wal_level": "minimal",
            "max_wal_senders": "0", "huge_pages": "off", "logging_collector": "off",
            "log_min_messages": "warning", "log_min_error_statement": "panic",  # injected errors: no statement dump
            "log_line_prefix": "%m [%p] ",
        }
        argv = [str(self._bindir / "postgres"), "-D", str(self.data_dir)]
        for k, v in settings.items():
            argv += ["-c", f"{k}={v}"]
        # Own session: a Ctrl-C at a terminal reaches the lab's cleanup, which stops the server in order.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.base, env=self._env(), start_new_session=True, **kw)
        pidfile = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return True
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise PostgresError(f"postgres not ready after 30 s; see {self.log_path}")

    def psql(self, sql: str, database: str = DATABASE, timeout: float = 30) -> str:
        """Run ``sql`` as the superuser over the Unix socket; its unaligned, tuples-only output."""
        if self.base is None or self._bindir is None:
            raise PostgresError("the lab PostgreSQL is not running: call start() first")
        argv = [str(self._bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-f", "-"]
        r = subprocess.run(argv, input=sql, text=True, capture_output=True, timeout=timeout, check=False,
                           env=self._env())
        if r.returncode != 0:
            raise PostgresError(f"psql failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return r.stdout

    def _seed(self) -> None:
        self.psql(f"CREATE ROLE {ROLE} LOGIN; CREATE DATABASE {DATABASE};", database="postgres")
        self.psql(seed_sql())

    def set_faults(self, delay_ms: int = 0, error_fraction: float = 0.0) -> None:
        """Every later ``lab_retrieve`` call sleeps ``delay_ms`` and fails with SQLSTATE XX000 for
        ``error_fraction`` of calls; ``set_faults()`` restores health. Takes effect at once (the
        function reads the table on each call)."""
        delay_ms, error_fraction = int(delay_ms), float(error_fraction)
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if not 0.0 <= error_fraction <= 1.0:
            raise ValueError("error_fraction must be in [0, 1]")
        self.psql(f"UPDATE lab_faults SET delay_ms = {delay_ms}, error_fraction = {error_fraction!r} WHERE id = 1;")

    def clear_faults(self) -> None:
        self.set_faults()

    def stop(self) -> None:
        """Fast shutdown (SIGINT: abort transactions, disconnect clients), then remove the directory."""
        atexit.unregister(self.stop)
        if self.proc is not None:
            _stop_postmaster(self.proc.pid, self.proc.wait)
            self.proc = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LabPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_postmaster(pid: int, wait=None) -> None:
    """SIGINT (fast shutdown), up to 15 s; then SIGQUIT (immediate), then SIGKILL. ``wait(timeout)``
    reaps our own child; a stranger's postmaster (sweep) is polled through /proc."""
    for sig, grace in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if wait is not None:
            try:
                wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid) and not _zombie(pid):
            time.sleep(0.05)
        if not _alive(pid) or _zombie(pid):
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return False


def sweep_stale() -> list[str]:
    """Stop the servers and remove the directories that killed runs left behind (owner pid in the
    directory name no longer alive). A server is only signalled when its command line names the
    directory, so a reused pid is never hit. Returns the directories removed."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(DIR_PREFIX + "*"):
        owner = d.name[len(DIR_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or _alive(int(owner)) or not d.is_dir():
            continue
        try:
            pm = int((d / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            pm = 0
        if pm and _alive(pm):
            try:
                cmdline = Path(f"/proc/{pm}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except FileNotFoundError:
                cmdline = ""
            if str(d) in cmdline:
                _stop_postmaster(pm)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
        log.info("event=postgres_swept dir=%s postmaster=%s", d, pm or "-")
    return removed


# --- the seed ----------------------------------------------------------------------------------
# Topics an LLM-serving team's knowledge base would hold; each chunk mixes one topic's terms with
# general ones, so questions match several chunks with different ranks.
_TOPICS = {
    "rate limits": ["rate limit", "429 responses", "retry-after header", "token bucket", "quota"],
    "retries": ["exponential backoff", "jitter", "idempotency key", "retry budget", "timeout"],
    "streaming": ["server-sent events", "first token", "chunked response", "stream options", "usage chunk"],
    "embeddings": ["embedding model", "vector dimension", "cosine similarity", "normalisation", "batching"],
    "retrieval": ["full-text search", "GIN index", "ranking", "top k", "chunk size"],
    "guardrails": ["input policy", "prompt injection", "content filter", "fail closed", "moderation"],
    "latency": ["p99 latency", "time to first token", "queueing", "tail latency", "connection reuse"],
    "tokenization": ["tokenizer", "prompt tokens", "completion tokens", "context window", "truncation"],
    "caching": ["semantic cache", "prompt cache", "hit ratio", "eviction", "cache key"],
    "observability": ["OpenTelemetry span", "trace context", "exemplar", "histogram bucket", "burn rate"],
    "incidents": ["error budget", "alert routing", "runbook", "postmortem", "on-call"],
    "networking": ["TLS handshake", "DNS resolution", "packet loss", "retransmission", "keep-alive"],
    "capacity": ["CPU quota", "memory limit", "OOM kill", "autoscaling", "run queue"],
    "databases": ["connection pool", "query plan", "lock wait", "replica lag", "statement timeout"],
    "providers": ["model deployment", "overloaded error", "regional endpoint", "fallback model", "SLA"],
    "evaluation": ["golden set", "groundedness", "regression test", "judge model", "hallucination rate"],
    "prompting": ["system prompt", "few-shot examples", "template", "citations", "temperature"],
    "cost": ["token spend", "cheaper model", "batch API", "cost per request", "budget alert"],
    "security": ["API key rotation", "secret storage", "audit log", "PII redaction", "tenant isolation"],
    "deployment": ["canary release", "feature flag", "rollback", "blue green", "config drift"],
}
_TEMPLATES = [
    "When {a} goes wrong, check {b} first and compare it with the baseline.",
    "Our guidance on {a}: keep {b} visible on the dashboard next to {c}.",
    "A common cause of slow answers is {a} interacting badly with {b}.",
    "Teams usually tune {a} together with {b} and {c}.",
    "During the last incident {a} hid a problem with {b} for twenty minutes.",
    "Measure {a} per request; averages hide {b}.",
    "If {a} rises while {b} stays flat, the fault is probably elsewhere.",
    "Document how {a} affects {b} in the runbook.",
]


def chunk_texts(n: int = CHUNKS, seed: int = 5) -> list[tuple[str, str]]:
    """(doc title, body) pairs, the same on every run."""
    rng = random.Random(seed)
    topics = list(_TOPICS)
    general = [t for terms in _TOPICS.values() for t in terms]
    out = []
    for i in range(n):
        topic = topics[i % len(topics)]
        terms = _TOPICS[topic]
        sentences = []
        for _ in range(rng.randint(3, 5)):
            a, b = rng.sample(terms, 2)
            sentences.append(rng.choice(_TEMPLATES).format(a=a, b=b, c=rng.choice(general)))
        out.append((f"{topic} notes #{i // len(topics) + 1}", " ".join(sentences)))
    return out


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def seed_sql() -> str:
    rows = ",\n".join(f"({_lit(doc)}, {_lit(body)})" for doc, body in chunk_texts())
    return f"""
CREATE TABLE chunks (
    id serial PRIMARY KEY,
    doc text NOT NULL,
    body text NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', doc || ' ' || body)) STORED
);
INSERT INTO chunks (doc, body) VALUES
{rows};
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
ANALYZE chunks;

CREATE TABLE lab_faults (
    id int PRIMARY KEY CHECK (id = 1),
    delay_ms int NOT NULL DEFAULT 0 CHECK (delay_ms >= 0),
    error_fraction float8 NOT NULL DEFAULT 0 CHECK (error_fraction BETWEEN 0 AND 1)
);
INSERT INTO lab_faults (id) VALUES (1);

-- The retrieval the RAG service calls. Faults are read on every call and act here, inside the
-- server: the client sees a slow or failing backend over a healthy connection. Any word of the
-- question may match (the question's lexemes OR-ed), best rank first.
CREATE FUNCTION lab_retrieve(q text, k int)
RETURNS TABLE (chunk_id int, doc text, body text, rank real)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    f record;
    tq tsquery;
BEGIN
    SELECT lf.delay_ms, lf.error_fraction INTO f FROM lab_faults lf WHERE lf.id = 1;
    IF f.delay_ms > 0 THEN
        PERFORM pg_sleep(f.delay_ms / 1000.0);
    END IF;
    IF f.error_fraction > 0 AND random() < f.error_fraction THEN
        RAISE EXCEPTION 'lab_retrieve: retrieval backend failed (injected lab fault)'
            USING ERRCODE = '{INJECTED_SQLSTATE}';
    END IF;
    tq := replace(plainto_tsquery('english', q)::text, ' & ', ' | ')::tsquery;
    RETURN QUERY
        SELECT c.id, c.doc, c.body, ts_rank(c.tsv, tq)
        FROM chunks c
        WHERE c.tsv @@ tq
        ORDER BY ts_rank(c.tsv, tq) DESC, c.id
        LIMIT k;
END
$fn$;

GRANT SELECT ON chunks, lab_faults TO {ROLE};
GRANT EXECUTE ON FUNCTION lab_retrieve(text, int) TO {ROLE};
"""
