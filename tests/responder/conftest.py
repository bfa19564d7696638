"""Fixtures shared by the responder's tests."""
from __future__ import annotations

import pytest

from tests.standins.slack import SlackStandin


@pytest.fixture
async def standin():
    """A Slack Web API stand-in on a loopback port."""
    s = SlackStandin()
    await s.start()
    yield s
    await s.stop()
