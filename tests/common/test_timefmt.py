"""The one timestamp reader: the webhook's strict RFC 3339 and the lenient reader of stored values."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.timefmt import GO_ZERO_TIME, format_timestamp, parse_timestamp, unix_seconds


@pytest.mark.parametrize("value, expected", [
    (1_700_000_000, 1_700_000_000.0),
    (1_700_000_000.5, 1_700_000_000.5),
    ("1700000000.25", 1_700_000_000.25),
    ("2026-11-27T10:54:49.471208863Z", datetime(2026, 11, 27, 10, 54, 49, 471208, tzinfo=UTC).timestamp()),
    ("2026-11-27T12:54:49+02:00", datetime(2026, 11, 27, 10, 54, 49, tzinfo=UTC).timestamp()),
    ("0001-01-01T00:00:00Z", None),  # Go's zero time: "not ended"
    (0, None), (-5, None), (True, None), (None, None), ("", None), ("  ", None),
    ("2026-11-27", None),  # a date is not a moment
    ("yesterday", None),
])
def test_unix_seconds(value, expected):
    assert unix_seconds(value) == expected


def test_format_and_parse_round_trip_and_the_zero_time():
    moment = datetime(2026, 11, 27, 10, 54, 49, 471000, tzinfo=UTC)
    assert parse_timestamp(format_timestamp(moment)) == moment
    assert format_timestamp(None) == "0001-01-01T00:00:00Z"
    assert parse_timestamp(format_timestamp(None)) == GO_ZERO_TIME
