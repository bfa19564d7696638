"""The Alertmanager v4 webhook payload: a real payload parses, and every error names its field."""
from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from common.timefmt import format_timestamp, parse_timestamp
from responder.http.alertmanager import Alert, Notification, PayloadError, parse_notification

# Shaped like what Alertmanager 0.25 POSTs: nanosecond timestamps, the Go zero time for an
# unset endsAt, an empty generatorURL (the rule came from a file without an external URL).
REAL_PAYLOAD: dict[str, Any] = {
    "receiver": "llmslo",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "LLMTTFTBurnFast",
                "namespace": "llm",
                "pod": "rag-api-7c9f6d8b5-xk2lq",
                "service": "rag-api",
                "severity": "page",
                "slo": "ttft",
            },
            "annotations": {
                "summary": "TTFT SLO burning 14.4x budget over 1h",
                "runbook_url": "https://runbooks.example.com/llm/latency-burn",
            },
            "startsAt": "2026-11-27T10:54:49.471208863Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": "a3c2f1e0b9d8c7f6",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "LLMTTFTBurnFast", "pod": "rag-api-7c9f6d8b5-p9zrt",
                       "severity": "page"},
            "annotations": {},
            "startsAt": "2026-11-27T11:40:01.5+01:00",
            "endsAt": "2026-11-27T10:59:49.000000001Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=slo%3Attft",
            "fingerprint": "0f1e2d3c4b5a6978",
        },
    ],
    "groupLabels": {"alertname": "LLMTTFTBurnFast"},
    "commonLabels": {"alertname": "LLMTTFTBurnFast", "severity": "page"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "version": "4",
    "groupKey": '{}/{severity=~"page|ticket"}:{alertname="LLMTTFTBurnFast"}',
    "truncatedAlerts": 0,
}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def broken(edit) -> bytes:
    doc = copy.deepcopy(REAL_PAYLOAD)
    edit(doc)
    return body(doc)


def test_real_payload_parses() -> None:
    n = parse_notification(body(REAL_PAYLOAD))
    assert isinstance(n, Notification)
    assert (n.receiver, n.status, n.version) == ("llmslo", "firing", "4")
    assert n.group_key.startswith("{}/")
    assert n.external_url == "http://alertmanager:9093"
    assert n.common_labels == {"alertname": "LLMTTFTBurnFast", "severity": "page"}

    first, second = n.alerts
    assert isinstance(first, Alert)
    # Nanoseconds are truncated, never rounded up.
    assert first.starts_at == datetime(2026, 11, 27, 10, 54, 49, 471208, tzinfo=UTC)
    assert first.starts_at.utcoffset().total_seconds() == 0
    assert first.ends_at is None
    assert first.generator_url == ""
    assert first.labels["pod"] == "rag-api-7c9f6d8b5-xk2lq"
    # +01:00 is converted to UTC.
    assert second.starts_at == datetime(2026, 11, 27, 10, 40, 1, 500000, tzinfo=UTC)
    assert second.ends_at == datetime(2026, 11, 27, 10, 59, 49, tzinfo=UTC)


def test_unknown_fields_are_ignored_and_optionals_default() -> None:
    doc = copy.deepcopy(REAL_PAYLOAD)
    doc["notification_reason"] = "repeat_interval"
    doc["alerts"][0]["silencedBy"] = []
    for key in ("groupLabels", "commonLabels", "commonAnnotations", "externalURL",
                "truncatedAlerts"):
        del doc[key]
    for key in ("annotations", "endsAt", "generatorURL"):
        del doc["alerts"][0][key]
    n = parse_notification(body(doc))
    assert (n.group_labels, n.common_labels, n.common_annotations) == ({}, {}, {})
    assert (n.external_url, n.truncated_alerts) == ("", 0)
    a = n.alerts[0]
    assert (a.annotations, a.ends_at, a.generator_url) == ({}, None, "")


def test_to_dict_round_trips_with_alertmanager_names() -> None:
    n = parse_notification(body(REAL_PAYLOAD))
    out = n.to_dict()
    assert set(out) == set(REAL_PAYLOAD)
    assert out["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert out["alerts"][0]["startsAt"] == "2026-11-27T10:54:49.471208Z"
    assert parse_notification(json.dumps(out).encode()) == n


def test_dedup_key_distinguishes_state_and_restart() -> None:
    a, b = parse_notification(body(REAL_PAYLOAD)).alerts
    assert a.dedup_key() == ("a3c2f1e0b9d8c7f6", "firing", "2026-11-27T10:54:49.471208+00:00")
    again = parse_notification(body(REAL_PAYLOAD)).alerts[0]
    assert again.dedup_key() == a.dedup_key()
    resolved = Alert(**{**a.__dict__, "status": "resolved"})
    assert resolved.dedup_key() != a.dedup_key()


def test_timestamp_helpers() -> None:
    assert parse_timestamp("2026-11-27T10:54:49Z").microsecond == 0
    assert parse_timestamp("2026-11-27T23:30:00-02:30") == datetime(
        2026, 11, 28, 2, 0, tzinfo=UTC)
    assert format_timestamp(None) == "0001-01-01T00:00:00Z"
    with pytest.raises(ValueError):
        parse_timestamp("2026-11-27")  # ISO 8601 date, not RFC 3339


def _walk(doc: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The container holding the last step of a dotted path, and that step's key or index."""
    steps = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = doc
    for step in steps[:-1]:
        target = target[step]
    return target, steps[-1]


def _set(path: str, value: Any):
    def edit(doc: dict[str, Any]) -> None:
        target, key = _walk(doc, path)
        target[key] = value
    return edit


def _delete(path: str):
    def edit(doc: dict[str, Any]) -> None:
        target, key = _walk(doc, path)
        del target[key]
    return edit


@pytest.mark.parametrize(
    ("edit", "field", "fragment"),
    [
        (_delete("version"), "version", "version: required field is missing"),
        (_set("version", "3"), "version", 'expected "4", got "3"'),
        (_set("version", 4), "version", "version: expected a string, got a number"),
        (_delete("groupKey"), "groupKey", "groupKey: required field is missing"),
        (_delete("receiver"), "receiver", "receiver: required field is missing"),
        (_delete("status"), "status", "status: required field is missing"),
        (_set("status", "pending"), "status", 'expected "firing" or "resolved", got "pending"'),
        (_delete("alerts"), "alerts", "alerts: required field is missing"),
        (_set("alerts", []), "alerts", "at least one alert"),
        (_set("alerts", {}), "alerts", "alerts: expected an array, got an object"),
        (_set("receiver", None), "receiver", "receiver: expected a string, got null"),
        (_set("truncatedAlerts", True), "truncatedAlerts", "expected an integer, got a boolean"),
        (_set("truncatedAlerts", -1), "truncatedAlerts", ">= 0"),
        (_set("commonLabels", {"severity": 3}), "commonLabels.severity",
         "commonLabels.severity: expected a string value, got a number"),
        (_set("groupLabels", ["alertname"]), "groupLabels", "expected an object, got an array"),
        (_set("alerts.1", "oops"), "alerts[1]", "alerts[1]: expected an object, got a string"),
        (_delete("alerts.1.fingerprint"), "alerts[1].fingerprint",
         "alerts[1].fingerprint: required field is missing"),
        (_delete("alerts.0.labels"), "alerts[0].labels", "required field is missing"),
        (_delete("alerts.0.startsAt"), "alerts[0].startsAt", "required field is missing"),
        (_delete("alerts.1.status"), "alerts[1].status", "required field is missing"),
        (_set("alerts.0.status", "FIRING"), "alerts[0].status", 'got "FIRING"'),
        (_set("alerts.0.labels.pod", None), "alerts[0].labels.pod",
         "expected a string value, got null"),
        (_set("alerts.0.annotations.summary", ["x"]), "alerts[0].annotations.summary",
         "got an array"),
        (_set("alerts.0.startsAt", "yesterday"), "alerts[0].startsAt",
         "'yesterday' is not an RFC 3339 timestamp"),
        (_set("alerts.1.endsAt", "2026-13-01T00:00:00Z"), "alerts[1].endsAt",
         "not a valid date and time"),
        (_set("alerts.0.startsAt", 1764240889), "alerts[0].startsAt",
         "expected a string, got a number"),
        (_set("alerts.0.fingerprint", 12), "alerts[0].fingerprint", "expected a string"),
        (_set("alerts.0.generatorURL", False), "alerts[0].generatorURL", "got a boolean"),
    ],
)
def test_errors_name_the_field(edit, field: str, fragment: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_notification(broken(edit))
    assert info.value.field == field
    assert fragment in str(info.value)
    assert field in str(info.value)


def test_invalid_json_gives_position() -> None:
    with pytest.raises(PayloadError, match=r"invalid JSON at line 1 column 13"):
        parse_notification(b'{"version": }')


def test_not_an_object() -> None:
    with pytest.raises(PayloadError, match="expected a JSON object at the top level, got an array"):
        parse_notification(b"[]")


def test_not_utf8() -> None:
    with pytest.raises(PayloadError, match="invalid JSON|UTF-8"):
        parse_notification(b"\xff\xfe\x00")


def test_version_is_checked_before_anything_else() -> None:
    # A v3 body may lack other fields; the version is the error worth reporting.
    with pytest.raises(PayloadError, match='version: expected "4"'):
        parse_notification(body({"version": "3"}))
