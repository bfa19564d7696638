"""Fixtures shared by the responder's tests."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lab.postgres import LabPostgres
from tests.standins.slack import SlackStandin

PG_ROLE = "llmslo_test"


@pytest.fixture
async def standin():
    """A Slack Web API stand-in on a loopback port."""
    s = SlackStandin()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> Iterator[LabPostgres]:
    """A real PostgreSQL for the store's tests: the lab's server (the distribution's initdb and
    postgres on a free loopback port, in a temporary directory), started once per session and
    stopped and removed at its end, by its atexit net, or by the next run's sweep after a kill."""
    server = LabPostgres(tmp_path_factory.mktemp("postgres")).start()
    try:
        server.psql(f"CREATE ROLE {PG_ROLE} LOGIN", database="postgres")
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: LabPostgres) -> Iterator[str]:
    """The URL of a fresh database owned by an ordinary role (the responder needs no superuser),
    over the server's Unix socket; dropped after the test."""
    name = "store_" + uuid.uuid4().hex[:12]
    pg_server.psql(f"CREATE DATABASE {name} OWNER {PG_ROLE}", database="postgres")
    try:
        yield f"postgresql://{PG_ROLE}@/{name}?host={pg_server.socket_dir}&port={pg_server.port}"
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", database="postgres")
