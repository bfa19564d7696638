"""The pipeline tests' world: settings, a real SQLite store and the shipped playbooks."""
from __future__ import annotations

from pathlib import Path

import pytest

from capture.probes import CATALOG
from responder import config
from responder.playbooks import load_playbooks
from responder.store.sqlite import IncidentStore

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def world(tmp_path):
    settings = config.load(env={}, data_dir=tmp_path / "data", webhook_token="t", slack_channel="#default",
                           playbooks_dir=REPO / "playbooks", calibration_file=None)
    store = IncidentStore(tmp_path / "s.sqlite3")
    playbooks = load_playbooks(REPO / "playbooks", set(CATALOG))
    yield settings, store, playbooks
    store.close()
