"""The incident store: the only place the responder writes state (see ``base`` for what it holds).

``open_store`` picks the back-end from the settings: ``sqlite`` (one process) or ``postgres``
(two or more replicas on one database).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from responder.store.base import StoreBase, StoreError
from responder.store.sqlite import IncidentStore


def open_store(database_url: str | None, sqlite_path: str | Path, **kw: Any) -> StoreBase:
    """The store the settings ask for: PostgreSQL when ``database_url`` is set (two or more
    replicas), else SQLite at ``sqlite_path``. StoreError says what is wrong with either."""
    if database_url:
        try:
            from responder.store.postgres import PostgresIncidentStore
        except ImportError as e:  # psycopg is a dependency, but a trimmed install may lack it
            raise StoreError(f"PostgreSQL needs the psycopg package ({e}); install psycopg[binary]") from None
        return PostgresIncidentStore(database_url, **kw)
    return IncidentStore(sqlite_path, **kw)
