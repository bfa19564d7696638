"""Playbooks: what to do for an alert family, one YAML file each in ``playbooks/``.

This package owns the playbook file format, its validation and the choice of a playbook for an
alert. A playbook says which alerts it handles (Alertmanager matchers), which probes to run and
for how long, how to find the capture target from the alert's labels, which PromQL to chart as
metric evidence, which alert label names the traced service, and which runbooks to link.

PromQL in a playbook may carry ``$label`` / ``${label}`` placeholders filled from the alert's
labels (``$$`` is a literal dollar). Inside a double-quoted PromQL string a value is escaped so it
cannot end the string; outside any string only a bare word (letters, digits, ``_``, ``:``) is
accepted, so a label value can never add PromQL of its own.

The package: ``model`` (what a playbook holds), ``validate`` (reading and checking a directory of
YAML files), ``promql`` (filling query placeholders), ``select`` (which playbook an alert gets)
and ``matchers`` (Alertmanager's label matchers).
"""
from __future__ import annotations

from responder.playbooks.model import (
    BASELINE_BOUNDS_S,
    DEFAULT_BASELINE_S,
    DEFAULT_DURATION_S,
    DEFAULT_PRIORITY,
    DEFAULT_SERVICE_LABELS,
    DURATION_BOUNDS_S,
    KUBE_LABEL_KEYS,
    NOTIFY_MODES,
    NOTIFY_PAGE,
    NOTIFY_QUIET,
    NOTIFY_WAIT,
    PLAYBOOK_SUFFIXES,
    PROM_KINDS,
    STEP_BOUNDS_S,
    CaptureSpec,
    Playbook,
    PlaybookLoadError,
    PlaybookProblem,
    PrometheusSpec,
    PromQuery,
    Runbook,
    ScopeSpec,
    TraceSpec,
    parse_duration,
)
from responder.playbooks.promql import ExprTemplateError, render_query, skip_reason
from responder.playbooks.select import PIN_LABEL, select_playbook
from responder.playbooks.validate import load_playbooks, validate_directory

__all__ = [
    "BASELINE_BOUNDS_S", "DEFAULT_BASELINE_S", "DEFAULT_DURATION_S", "DEFAULT_PRIORITY", "DEFAULT_SERVICE_LABELS",
    "DURATION_BOUNDS_S", "KUBE_LABEL_KEYS", "NOTIFY_MODES", "NOTIFY_PAGE", "NOTIFY_QUIET", "NOTIFY_WAIT",
    "PIN_LABEL", "PLAYBOOK_SUFFIXES", "PROM_KINDS", "STEP_BOUNDS_S",
    "CaptureSpec", "ExprTemplateError", "Playbook", "PlaybookLoadError", "PlaybookProblem", "PromQuery",
    "PrometheusSpec", "Runbook", "ScopeSpec", "TraceSpec", "load_playbooks", "parse_duration", "render_query",
    "select_playbook", "skip_reason", "validate_directory",
]
