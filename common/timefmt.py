"""Timestamps as the project's wire formats carry them: RFC 3339 the way Go writes it
(Alertmanager's ``startsAt``, nanosecond fractions, Go's zero time for "no end yet"), and Unix
seconds. One parser for all of them: the webhook's strict one, and a lenient reader for stored
values that may be either form.
"""
from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

# Go's zero time.Time, which Alertmanager serialises for an alert that has no end yet.
GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)

# RFC 3339 as Go's time.RFC3339Nano writes it. Written out rather than using
# datetime.fromisoformat, which also accepts ISO 8601 forms (dates only, week dates) that are
# not valid here and would hide a broken sender.
_RFC3339 = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt ]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


@functools.lru_cache(maxsize=4096)  # alerts of one group mostly share their start and end times
def format_timestamp(value: datetime | None) -> str:
    """RFC 3339 in UTC with a ``Z``; ``None`` becomes Go's zero time, as Alertmanager sends it."""
    m = GO_ZERO_TIME if value is None else value.astimezone(UTC)
    # Written by hand: strftime("%Y") does not pad year 1 (the Go zero time) on glibc.
    text = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    if m.microsecond:
        text += f".{m.microsecond:06d}".rstrip("0")
    return text + "Z"


@functools.lru_cache(maxsize=4096)
def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into a tz-aware UTC datetime.

    Fractions beyond microseconds (Go sends nanoseconds) are truncated, not rounded, so a
    timestamp never moves into the next second. Raises ``ValueError`` with the reason.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp (e.g. 2026-11-27T10:54:49.471Z)")
    fraction = (m["fraction"] or "")[:6].ljust(6, "0")
    offset_text = m["offset"]
    if offset_text in ("Z", "z"):
        tz = UTC
    else:
        sign = -1 if offset_text[0] == "-" else 1
        hours, minutes = int(offset_text[1:3]), int(offset_text[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{text!r} has an invalid UTC offset {offset_text!r}")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        local = datetime(int(m["year"]), int(m["month"]), int(m["day"]), int(m["hour"]),
                         int(m["minute"]), int(m["second"]), int(fraction), tzinfo=tz)
        return local.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{text!r} is not a valid date and time: {exc}") from None


def unix_seconds(value: Any) -> float | None:
    """Unix seconds from a number, a numeric string or an RFC 3339 timestamp; None for nothing,
    for what is neither, and for Go's zero time (Alertmanager's "not ended")."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = parse_timestamp(text)
    except ValueError:
        return None
    return None if moment == GO_ZERO_TIME else moment.timestamp()
