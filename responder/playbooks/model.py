"""The playbook model: what a loaded playbook holds, and the bounds and defaults of its fields."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from responder.playbooks.matchers import Matcher
from responder.playbooks.promql import Slot, parse_expr

# Without a priority a playbook should still be tried before the catch-all fallback (priority 0).
DEFAULT_PRIORITY = 100
# How a playbook's incidents reach chat: ``page`` posts the thread and mentions whom the alert names;
# ``quiet`` posts it without the mention (a warning to read, not a page); ``wait`` posts nothing
# until an alert of a ``page`` playbook arrives for the same workload, whose thread then opens
# with this incident's verdict. The investigation (capture, verdict, incident page) runs in all three.
NOTIFY_PAGE, NOTIFY_QUIET, NOTIFY_WAIT = "page", "quiet", "wait"
NOTIFY_MODES = (NOTIFY_PAGE, NOTIFY_QUIET, NOTIFY_WAIT)
DURATION_BOUNDS_S = (1.0, 120.0)
BASELINE_BOUNDS_S = (0.0, 600.0)
DEFAULT_DURATION_S = 10.0
DEFAULT_BASELINE_S = 60.0
PLAYBOOK_SUFFIXES = (".yaml", ".yml")
PROM_KINDS = ("burn_rate", "sli", "signal", "onset")
STEP_BOUNDS_S = (1.0, 3600.0)
DEFAULT_SERVICE_LABELS = ("service", "service_name", "job")

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class PlaybookProblem:
    """One thing wrong with a playbook file (or, with ``line`` None, with the directory)."""

    file: str
    line: int | None  # 1-based
    column: int | None  # 1-based
    message: str

    def format(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PlaybookLoadError(ValueError):
    """The playbook directory has problems; ``problems`` lists all of them."""

    def __init__(self, problems: list[PlaybookProblem]) -> None:
        self.problems = list(problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        lines = "\n".join(p.format() for p in self.problems)
        super().__init__(f"{len(self.problems)} playbook {noun}:\n{lines}")


@dataclass(frozen=True)
class CaptureSpec:
    probes: tuple[str, ...]
    duration_s: float = DEFAULT_DURATION_S
    # How much history before the incident to compare against (flight recorder, traces, metrics).
    baseline_s: float = DEFAULT_BASELINE_S


@dataclass(frozen=True)
class ScopeSpec:
    """Which alert labels name the capture target; per kind, the first label present wins.

    On a plain host: pid, cgroup, port or container id labels (a container a runtime such as
    podman or docker started, by its id). On Kubernetes: a namespace plus a pod, a
    workload (deployment, statefulset, daemonset, job) or a service, optionally narrowed to one
    container; each is read only when the playbook names its label. (The shipped playbooks read
    a Job from ``job_name``: Prometheus's own ``job`` label names a scrape job.)"""

    pid_labels: tuple[str, ...] = ("pid",)
    cgroup_labels: tuple[str, ...] = ("cgroup",)
    port_labels: tuple[str, ...] = ("port",)
    container_id_labels: tuple[str, ...] = ("container_id",)
    namespace_label: str | None = None
    pod_label: str | None = None
    service_label: str | None = None
    deployment_label: str | None = None
    statefulset_label: str | None = None
    daemonset_label: str | None = None
    job_label: str | None = None
    container_label: str | None = None

    def first_present(self, names: Iterable[str], labels: Mapping[str, str]) -> str | None:
        """The value of the first of ``names`` the alert carries with a non-empty value."""
        for name in names:
            if labels.get(name):
                return labels[name]
        return None


KUBE_LABEL_KEYS = ("namespace_label", "pod_label", "service_label", "deployment_label", "statefulset_label",
                   "daemonset_label", "job_label", "container_label")


@dataclass(frozen=True)
class Runbook:
    title: str
    url: str


@dataclass(frozen=True)
class PromQuery:
    """One PromQL query charted as metric evidence; ``expr`` may hold ``$label`` placeholders."""

    name: str
    title: str
    expr: str
    unit: str = ""
    kind: str = "signal"  # one of PROM_KINDS

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The label names ``expr`` uses, in order of first use."""
        seen: dict[str, None] = {}
        for part in parse_expr(self.expr):
            if isinstance(part, Slot):
                seen.setdefault(part.label)
        return tuple(seen)


@dataclass(frozen=True)
class PrometheusSpec:
    queries: tuple[PromQuery, ...] = ()
    # Range-query resolution; None lets the evidence step choose one from the window.
    step_s: float | None = None


@dataclass(frozen=True)
class TraceSpec:
    """Which alert labels name the traced service; the first label present wins."""

    service_labels: tuple[str, ...] = DEFAULT_SERVICE_LABELS

    def service(self, labels: Mapping[str, str]) -> str | None:
        return next((labels[n] for n in self.service_labels if labels.get(n)), None)


@dataclass(frozen=True)
class Playbook:
    name: str
    source: Path
    matchers: tuple[Matcher, ...]
    capture: CaptureSpec
    scope: ScopeSpec = field(default_factory=ScopeSpec)
    runbooks: tuple[Runbook, ...] = ()
    description: str = ""
    priority: int = DEFAULT_PRIORITY
    channel: str | None = None
    prometheus: PrometheusSpec = field(default_factory=PrometheusSpec)
    traces: TraceSpec = field(default_factory=TraceSpec)
    notify: str = NOTIFY_PAGE  # one of NOTIFY_MODES

    @property
    def is_fallback(self) -> bool:
        return not self.matchers

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)


def parse_duration(value: Any) -> float:
    """Seconds from ``"10s"``, ``"500ms"``, ``"2m"``, ``"1m30s"`` or a number of seconds.

    Raises ``ValueError`` saying which forms are accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s, 500ms or 2m, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    raise ValueError(f"expected a duration like 10s, 500ms or 2m, got {value!r}")
