"""Ad hoc captures: the investigate pipeline started by a person instead of an alert.

``POST /api/captures``, ``llmslo`` CLI and the Slack app (slash command, thread buttons,
@mentions) all build an :class:`AdhocRequest`. It becomes a one-alert Alertmanager notification
under an ``adhoc:`` group, stored before anyone is answered, so it is investigated once even
across a restart. What the person asked for beyond the labels (duration, probes, who asked, the
chat thread the answer belongs in) travels in the alert's annotations, so it is persisted with
the incident and read back by the pipeline (:func:`options`).
"""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from capture.schemas import RequestError, check_duration, check_probes
from common.http import load_json
from responder.playbooks import PIN_LABEL
from responder.store.base import ADHOC_GROUP_PREFIX

MAX_BODY_BYTES = 64 * 1024
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FIELDS = ("labels", "reason", "playbook", "started_at", "duration_s", "probes")

# Annotation keys of the ad hoc alert that carry the request's options.
DURATION_KEY = "llmslo_duration_s"
PROBES_KEY = "llmslo_probes"
REQUESTED_BY_KEY = "llmslo_requested_by"
REPLY_TO_KEY = "llmslo_reply_to"  # JSON {"sink", "channel", "ts", "incident_id"}: answer in that thread


class Overloaded(Exception):
    """Too many incidents are waiting for a worker: refuse new work (nothing is stored)."""


@dataclass
class AdhocRequest:
    labels: dict[str, str]
    reason: str = "ad hoc capture"
    playbook: str | None = None
    started_at: float | None = None  # when the problem began: where the baselines end
    duration_s: float | None = None  # None: the playbook's
    probes: list[str] | None = None  # None: the playbook's
    requested_by: str | None = None
    reply_to: dict[str, str] | None = field(default=None)

    def notification(self, external_url: str) -> bytes:
        """The version 4 notification holding this request's one firing alert. Its startsAt is
        when the person says the problem began, else now."""
        key = uuid.uuid4().hex
        labels = {"alertname": "AdhocCapture", **self.labels}
        if self.playbook:
            labels[PIN_LABEL] = self.playbook
        annotations = {"summary": self.reason}
        if self.duration_s is not None:
            annotations[DURATION_KEY] = f"{self.duration_s:g}"
        if self.probes:
            annotations[PROBES_KEY] = ",".join(self.probes)
        if self.requested_by:
            annotations[REQUESTED_BY_KEY] = self.requested_by
        if self.reply_to:
            annotations[REPLY_TO_KEY] = json.dumps(self.reply_to, sort_keys=True)
        since = (datetime.fromtimestamp(self.started_at, UTC) if self.started_at
                 else datetime.now(UTC))
        alert = {"status": "firing", "labels": labels, "annotations": annotations,
                 "startsAt": since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                 "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": key[:16]}
        return json.dumps({"version": "4", "groupKey": f"{ADHOC_GROUP_PREFIX}{key}", "truncatedAlerts": 0,
                           "status": "firing", "receiver": "adhoc", "groupLabels": {}, "commonLabels": labels,
                           "commonAnnotations": {"summary": self.reason}, "externalURL": external_url,
                           "alerts": [alert]}).encode()


def parse_request(body: bytes, playbooks: Iterable[str], known_probes: Iterable[str]) -> AdhocRequest:
    """The request in a ``POST /api/captures`` body; ValueError says what is wrong."""
    data = load_json(body)  # JsonBodyError (a ValueError) names what is wrong
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with labels")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}")
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError("labels: expected a non-empty object of label names to string values")
    check_labels(labels)
    reason = data.get("reason", "ad hoc capture")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ValueError("reason: expected a string of at most 500 characters")
    playbook = data.get("playbook")
    known_playbooks = set(playbooks)
    if playbook is not None and not isinstance(playbook, str):
        raise ValueError("playbook: expected the name of a loaded playbook (a string)")
    if playbook is not None and playbook not in known_playbooks:
        raise ValueError(f"playbook: {playbook!r} is not loaded; known: {', '.join(sorted(known_playbooks))}")
    started_at = data.get("started_at")
    now = time.time()
    if started_at is not None and (isinstance(started_at, bool) or not isinstance(started_at, (int, float))
                                   or not now - 86_400 <= started_at <= now + 60):
        raise ValueError("started_at: expected Unix seconds within the last day (when the problem began)")
    duration = data.get("duration_s")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))):
        raise ValueError("duration_s: expected a number of seconds")
    probes = data.get("probes")
    if duration is not None and not -1e9 < duration < 1e9:  # also a 400-digit integer, before float()
        raise ValueError("duration_s: expected a number of seconds from 1 to 120")
    try:  # the agent's own bounds
        if duration is not None:
            duration = check_duration(float(duration))
        if probes is not None:
            probes = list(dict.fromkeys(check_probes(probes, set(known_probes))))
    except RequestError as e:
        raise ValueError(str(e)) from None
    return AdhocRequest(dict(labels), reason, playbook, started_at, duration, probes)


def check_labels(labels: Mapping[str, Any]) -> None:
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_NAME.fullmatch(k) or not isinstance(v, str) or not v or len(v) > 1024:
            raise ValueError(f"labels.{k}: expected a Prometheus label name with a non-empty string value "
                             "of at most 1024 characters")


@dataclass(frozen=True)
class Options:
    """What an ad hoc incident's requester asked for (all None for an alert's incident)."""

    duration_s: float | None = None
    probes: tuple[str, ...] | None = None
    requested_by: str | None = None
    reply_to: dict[str, str] | None = None


def options(alerts: list[dict[str, Any]]) -> Options:
    """The options stored in an incident's ad hoc alert; what cannot be read is ignored."""
    ann = (alerts[0].get("annotations") or {}) if alerts else {}
    duration = probes = reply_to = None
    try:
        duration = check_duration(float(ann[DURATION_KEY]))
    except (KeyError, ValueError, TypeError):  # RequestError is a ValueError
        pass
    if ann.get(PROBES_KEY):
        probes = tuple(p for p in str(ann[PROBES_KEY]).split(",") if p)
    try:
        r = json.loads(ann[REPLY_TO_KEY])
        if isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("sink", "channel", "ts")):
            reply_to = {k: str(v) for k, v in r.items()}
    except (KeyError, ValueError, TypeError):
        pass
    return Options(duration, probes or None, ann.get(REQUESTED_BY_KEY) or None, reply_to)
