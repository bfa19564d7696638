"""A real PostgreSQL for the store's tests.

The server is the lab's (``lab.postgres.LabPostgres``: the distribution's ``initdb``/``postgres``
on a free loopback port, a temporary directory, stopped and removed at the end of the session,
by its ``atexit`` net, or by the next run's sweep after a kill). Each test gets a fresh database
owned by an ordinary role (the responder needs no superuser), reached over the server's Unix
socket; it is dropped when the test ends. Import the fixtures into a test module to use them.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lab.postgres import LabPostgres

ROLE = "llmslo_test"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> Iterator[LabPostgres]:
    server = LabPostgres(tmp_path_factory.mktemp("postgres")).start()
    try:
        server.psql(f"CREATE ROLE {ROLE} LOGIN", database="postgres")
        yield server
    finally:
        server.stop()


def new_database(server: LabPostgres) -> tuple[str, str]:
    """A fresh, empty database: (name, URL)."""
    name = "store_" + uuid.uuid4().hex[:12]
    server.psql(f"CREATE DATABASE {name} OWNER {ROLE}", database="postgres")
    return name, f"postgresql://{ROLE}@/{name}?host={server.socket_dir}&port={server.port}"


def drop_database(server: LabPostgres, name: str) -> None:
    server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", database="postgres")


@pytest.fixture
def pg_url(pg_server: LabPostgres) -> Iterator[str]:
    """The URL of a fresh database, dropped after the test."""
    name, url = new_database(pg_server)
    try:
        yield url
    finally:
        drop_database(pg_server, name)
