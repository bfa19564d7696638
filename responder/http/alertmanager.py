"""The Alertmanager webhook payload (version "4"): its typed form and its strict parser.

This module owns the wire format Alertmanager POSTs to ``/webhook/alertmanager``. Intake calls
``parse_notification`` on the raw body; every later stage works on ``Notification`` / ``Alert``
and never looks at the JSON again. ``to_dict`` gives the same camelCase shape back, so a stored
notification can be replayed (``llmslo replay``) exactly as Alertmanager sent it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common.http import JsonBodyError, load_json
from common.timefmt import GO_ZERO_TIME, format_timestamp, parse_timestamp

SUPPORTED_VERSION = "4"
STATUSES = ("firing", "resolved")



class PayloadError(ValueError):
    """The webhook body is not a valid version 4 notification.

    ``field`` names the offending field as a path (``alerts[2].fingerprint``), or is ``None``
    when the body as a whole is wrong (not JSON, not an object).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Alert:
    """One alert of a notification group."""

    status: str  # "firing" | "resolved"
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime  # tz-aware, UTC
    ends_at: datetime | None  # None while Alertmanager has no end time (Go zero time on the wire)
    generator_url: str  # "" when the rule source did not set one
    fingerprint: str

    def dedup_key(self) -> tuple[str, str, str]:
        """Identity of this alert *state*: Alertmanager re-sends the same alert every
        ``repeat_interval``, and a restart of the same alert gets a new ``startsAt``."""
        return (self.fingerprint, self.status, self.starts_at.isoformat())

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": format_timestamp(self.starts_at),
            "endsAt": format_timestamp(self.ends_at),
            "generatorURL": self.generator_url,
            "fingerprint": self.fingerprint,
        }


@dataclass
class Notification:
    """One webhook call: a group of alerts sharing ``group_key``."""

    receiver: str
    status: str  # "firing" if any alert of the group fires, else "resolved"
    alerts: list[Alert]
    group_labels: dict[str, str] = field(default_factory=dict)
    common_labels: dict[str, str] = field(default_factory=dict)
    common_annotations: dict[str, str] = field(default_factory=dict)
    external_url: str = ""
    version: str = SUPPORTED_VERSION
    group_key: str = ""
    truncated_alerts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "receiver": self.receiver,
            "status": self.status,
            "alerts": [a.to_dict() for a in self.alerts],
            "groupLabels": dict(self.group_labels),
            "commonLabels": dict(self.common_labels),
            "commonAnnotations": dict(self.common_annotations),
            "externalURL": self.external_url,
            "version": self.version,
            "groupKey": self.group_key,
            "truncatedAlerts": self.truncated_alerts,
        }


def parse_notification(body: bytes) -> Notification:
    """Parse and validate a webhook body; raise ``PayloadError`` naming what is wrong."""
    try:
        doc = load_json(body)
    except JsonBodyError as exc:
        raise PayloadError(str(exc)) from None
    if not isinstance(doc, dict):
        raise PayloadError(f"expected a JSON object at the top level, got {_json_type(doc)}")

    # The version first: if it is not "4", every other complaint would be misleading.
    version = _required(doc, "version", str, "")
    if version != SUPPORTED_VERSION:
        raise PayloadError(
            f'version: expected "{SUPPORTED_VERSION}", got {json.dumps(version)}', "version")

    group_key = _required(doc, "groupKey", str, "")
    status = _status(doc, "")
    receiver = _required(doc, "receiver", str, "")
    raw_alerts = _required(doc, "alerts", list, "")
    if not raw_alerts:
        raise PayloadError("alerts: expected at least one alert, got an empty list", "alerts")
    alerts = [_parse_alert(raw, f"alerts[{i}]") for i, raw in enumerate(raw_alerts)]

    truncated = _optional(doc, "truncatedAlerts", int, "", 0)
    if truncated < 0:
        raise PayloadError(f"truncatedAlerts: expected a count >= 0, got {truncated}",
                           "truncatedAlerts")
    return Notification(
        receiver=receiver,
        status=status,
        alerts=alerts,
        group_labels=_string_map(doc, "groupLabels", ""),
        common_labels=_string_map(doc, "commonLabels", ""),
        common_annotations=_string_map(doc, "commonAnnotations", ""),
        external_url=_optional(doc, "externalURL", str, "", ""),
        version=version,
        group_key=group_key,
        truncated_alerts=truncated,
    )


def _parse_alert(raw: Any, where: str) -> Alert:
    if not isinstance(raw, dict):
        raise PayloadError(f"{where}: expected an object, got {_json_type(raw)}", where)
    prefix = where + "."
    status = _status(raw, prefix)
    labels = _string_map(raw, "labels", prefix, required=True)
    starts_at = _timestamp(raw, "startsAt", prefix, required=True)
    fingerprint = _required(raw, "fingerprint", str, prefix)
    if starts_at is None:
        raise PayloadError(f"{prefix}startsAt: the zero time is not a valid start",
                           prefix + "startsAt")
    return Alert(
        status=status,
        labels=labels,
        annotations=_string_map(raw, "annotations", prefix),
        starts_at=starts_at,
        ends_at=_timestamp(raw, "endsAt", prefix, required=False),
        generator_url=_optional(raw, "generatorURL", str, prefix, ""),
        fingerprint=fingerprint,
    )


# --- field readers: each names the field by its full path in its error ---------------------

def _json_type(value: Any) -> str:
    # JSON's names, since the person reading the error is looking at JSON.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_EXPECTED = {str: "a string", int: "an integer", list: "an array", dict: "an object"}


def _check_type(value: Any, kind: type, path: str) -> Any:
    # bool is an int in Python but not in JSON.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PayloadError(f"{path}: expected {_EXPECTED[kind]}, got {_json_type(value)}", path)
    return value


def _required(obj: dict[str, Any], key: str, kind: type, prefix: str) -> Any:
    path = prefix + key
    if key not in obj:
        raise PayloadError(f"{path}: required field is missing", path)
    return _check_type(obj[key], kind, path)


def _optional(obj: dict[str, Any], key: str, kind: type, prefix: str, default: Any) -> Any:
    # Alertmanager never sends null for these, but other senders (and hand-written replay
    # files) do; null means "not set".
    if obj.get(key) is None:
        return default
    return _check_type(obj[key], kind, prefix + key)


def _status(obj: dict[str, Any], prefix: str) -> str:
    status = _required(obj, "status", str, prefix)
    if status not in STATUSES:
        raise PayloadError(
            f'{prefix}status: expected "firing" or "resolved", got {json.dumps(status)}',
            prefix + "status")
    return status


def _string_map(
    obj: dict[str, Any], key: str, prefix: str, required: bool = False
) -> dict[str, str]:
    path = prefix + key
    raw = _required(obj, key, dict, prefix) if required else _optional(obj, key, dict, prefix, {})
    for name, value in raw.items():
        if not isinstance(value, str):
            raise PayloadError(
                f"{path}.{name}: expected a string value, got {_json_type(value)}",
                f"{path}.{name}")
    return dict(raw)


def _timestamp(obj: dict[str, Any], key: str, prefix: str, required: bool) -> datetime | None:
    path = prefix + key
    text = _required(obj, key, str, prefix) if required else _optional(obj, key, str, prefix, None)
    if text is None:
        return None
    try:
        moment = parse_timestamp(text)
    except ValueError as exc:
        raise PayloadError(f"{path}: {exc}", path) from None
    return None if moment == GO_ZERO_TIME else moment
