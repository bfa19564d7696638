"""The lab's PostgreSQL, for real: initdb and postgres as the ``postgres`` OS user on loopback,
the seeded chunks and their full-text index, retrieval faults that act inside the server (seen
through asyncpg as the service's role), and cleanup however a run ends: stop(), the atexit
safety net, and the sweep of a run killed with SIGKILL."""
from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from lab.harness import REPO
from lab.postgres import INJECTED_SQLSTATE, LabPostgres, PostgresError, sweep_stale

pytestmark = pytest.mark.needs_postgres

QUESTION = "How should retries handle 429 responses and the retry-after header?"


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    server = LabPostgres(tmp_path_factory.mktemp("pg")).start()
    try:
        yield server
    finally:
        server.stop()


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


async def test_server_runs_seeded_on_loopback_as_postgres(pg):
    if os.geteuid() == 0:
        assert _uid(pg.proc.pid) == pwd.getpwnam("postgres").pw_uid
    assert pg.dsn == f"postgresql://lab@127.0.0.1:{pg.port}/rag"
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SELECT count(*) FROM chunks") == 200
        assert await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE tablename = 'chunks' AND "
                                   "indexname = 'chunks_tsv'") == \
            "CREATE INDEX chunks_tsv ON public.chunks USING gin (tsv)"
        rows = await conn.fetch("SELECT * FROM lab_retrieve($1, 4)", QUESTION)
        assert len(rows) == 4
        assert [r["rank"] for r in rows] == sorted((r["rank"] for r in rows), reverse=True)
        assert all("retr" in r["body"].lower() or "429" in r["body"] or "retry" in r["doc"] or "rate" in r["doc"]
                   for r in rows)
        assert await conn.fetch("SELECT * FROM lab_retrieve($1, 4)", "the of and") == []  # no lexemes: no rows
        # the service's role reads; only the lab (superuser over the socket) changes faults
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE lab_faults SET delay_ms = 1")
    finally:
        await conn.close()
    # the superuser is not reachable over TCP
    with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, asyncpg.PostgresError)):
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/rag")


async def test_faults_act_inside_the_database(pg):
    conn = await asyncpg.connect(pg.dsn)
    try:
        t0 = time.monotonic()
        await conn.fetch("SELECT * FROM lab_retrieve($1, 4)", QUESTION)
        healthy_s = time.monotonic() - t0
        assert healthy_s < 0.5

        pg.set_faults(delay_ms=300)
        t0 = time.monotonic()
        assert len(await conn.fetch("SELECT * FROM lab_retrieve($1, 4)", QUESTION)) == 4
        assert 0.3 <= time.monotonic() - t0 < 1.0

        pg.set_faults(error_fraction=1.0)  # also clears the delay: set_faults states the whole fault
        t0 = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as err:
            await conn.fetch("SELECT * FROM lab_retrieve($1, 4)", QUESTION)
        assert err.value.sqlstate == INJECTED_SQLSTATE
        assert time.monotonic() - t0 < 0.5

        pg.set_faults(error_fraction=0.5)
        failed = 0
        for _ in range(60):
            try:
                await conn.fetch("SELECT * FROM lab_retrieve($1, 4)", QUESTION)
            except asyncpg.PostgresError as e:
                assert e.sqlstate == INJECTED_SQLSTATE
                failed += 1
        assert 12 <= failed <= 48  # binomial(60, 0.5): outside this about once in 10^5 runs

        pg.clear_faults()
        for _ in range(10):
            assert len(await conn.fetch("SELECT * FROM lab_retrieve($1, 4)", QUESTION)) == 4
    finally:
        pg.clear_faults()
        await conn.close()
    with pytest.raises(ValueError, match="error_fraction"):
        pg.set_faults(error_fraction=1.5)
    with pytest.raises(ValueError, match="delay_ms"):
        pg.set_faults(delay_ms=-1)


def test_stop_removes_everything(tmp_path):
    server = LabPostgres(tmp_path).start()
    pid, base = server.proc.pid, server.base
    assert base.name.startswith(f"llmslo-lab-pg-{os.getpid()}-")
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 5
    assert _gone(pid) and not base.exists()
    server.stop()  # idempotent
    with pytest.raises(PostgresError):
        server.psql("SELECT 1")


_CHILD = """
import json, sys
from pathlib import Path
from lab.postgres import LabPostgres
pg = LabPostgres(Path(sys.argv[1])).start()
print(json.dumps({"pid": pg.proc.pid, "base": str(pg.base)}), flush=True)
if sys.argv[2] == "hang":
    sys.stdin.read()  # until killed
"""


def _child(tmp_path: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), mode], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def test_atexit_stops_the_server_of_a_run_that_forgot(tmp_path):
    child = _child(tmp_path, "exit")
    info = json.loads(child.stdout.readline())
    assert child.wait(timeout=30) == 0
    assert _gone(info["pid"]) and not Path(info["base"]).exists()


def test_sweep_removes_what_a_killed_run_left(tmp_path):
    child = _child(tmp_path, "hang")
    try:
        info = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    pid, base = info["pid"], Path(info["base"])
    assert not _gone(pid) and base.exists()  # SIGKILL gives the run no chance to clean up
    sweep_stale()  # (a concurrent lab run may sweep it first: either way it must be gone)
    assert _gone(pid) and not base.exists()
    assert str(base) not in sweep_stale()
