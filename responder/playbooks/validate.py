"""Loading and validating a playbook directory.

Validation is for people editing YAML by hand (``llmslo playbooks validate``): it reads the
composed node tree rather than plain Python values, so every problem carries the line and column
of the YAML node at fault, and it reports every problem in every file instead of stopping at the
first. The probe catalog lives in ``capture``; callers pass its probe names in, so this package
does not depend on it.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from responder.playbooks.matchers import LABEL_NAME, Matcher, MatcherError, parse_matcher
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
from responder.playbooks.promql import ExprTemplateError, parse_expr
from responder.playbooks.select import selection_order

_NAME = re.compile(r"[a-z0-9-]+")
_QUERY_NAME = re.compile(r"[a-z][a-z0-9_]*")

_TAG = "tag:yaml.org,2002:"
_TAG_NAMES = {
    _TAG + "str": "a string", _TAG + "int": "an integer", _TAG + "float": "a number",
    _TAG + "bool": "a boolean", _TAG + "null": "empty (null)", _TAG + "timestamp": "a timestamp",
}


def load_playbooks(directory: str | Path, known_probes: set[str]) -> list[Playbook]:
    """Load every playbook in ``directory``, highest priority first, then by file name.

    Raises ``PlaybookLoadError`` with all problems if any file (or the directory) has one.
    """
    playbooks, problems = _read_directory(Path(directory), known_probes)
    if problems:
        raise PlaybookLoadError(problems)
    return selection_order(playbooks)


def validate_directory(directory: str | Path, known_probes: set[str]) -> list[PlaybookProblem]:
    """Every problem across every playbook file in ``directory``; empty when it loads cleanly."""
    return _read_directory(Path(directory), known_probes)[1]


def _read_directory(
    directory: Path, known_probes: set[str]
) -> tuple[list[Playbook], list[PlaybookProblem]]:
    where = str(directory)
    if not directory.is_dir():
        return [], [PlaybookProblem(where, None, None, "not a directory (or does not exist)")]
    files = sorted(
        p for p in directory.iterdir()
        if p.suffix in PLAYBOOK_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not files:
        return [], [PlaybookProblem(
            where, None, None, "no playbook files (*.yaml, *.yml) in this directory")]

    playbooks: list[Playbook] = []
    problems: list[PlaybookProblem] = []
    first_by_name: dict[str, str] = {}
    has_fallback = False
    for path in files:
        reader = _PlaybookReader(str(path), known_probes)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            problems.append(PlaybookProblem(str(path), None, None, f"cannot read: {exc.strerror}"))
            continue
        playbook = reader.read(text, path)
        # In file order, as an editor would walk through them.
        problems.extend(sorted(reader.problems, key=lambda p: (p.line or 0, p.column or 0)))
        # A file whose only problems are elsewhere still counts as the fallback: saying "no
        # fallback" on top of its own problems would send the reader to the wrong place.
        has_fallback = has_fallback or reader.match_is_empty
        if reader.name is not None:
            name, node = reader.name
            if name in first_by_name:
                problems.append(reader.problem_at(
                    node, f"duplicate playbook name {name!r}; already used in "
                          f"{first_by_name[name]}"))
                playbook = None
            else:
                first_by_name[name] = str(path)
        if playbook is not None:
            playbooks.append(playbook)
    if not has_fallback:
        problems.append(PlaybookProblem(
            where, None, None,
            "no fallback playbook: add one with an empty match list (match: []) so that every "
            "alert gets a playbook"))
    return playbooks, problems


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")


class _PlaybookReader:
    """Checks one file's node tree, collecting problems; builds the Playbook if there are none."""

    TOP_KEYS = {"name": True, "description": False, "priority": False, "match": True,
                "capture": True, "scope": False, "runbooks": False, "channel": False,
                "prometheus": False, "traces": False, "notify": False}
    PROMETHEUS_KEYS = {"step": False, "queries": True}
    QUERY_KEYS = {"name": True, "title": True, "expr": True, "unit": False, "kind": True}
    TRACES_KEYS = {"service_labels": False}
    CAPTURE_KEYS = {"probes": True, "duration": False, "baseline": False}
    SCOPE_KEYS = {"pid_labels": False, "cgroup_labels": False, "port_labels": False, "container_id_labels": False,
                  **{k: False for k in KUBE_LABEL_KEYS}}
    RUNBOOK_KEYS = {"title": True, "url": True}

    def __init__(self, file: str, known_probes: set[str]) -> None:
        self.file = file
        self.known_probes = known_probes
        self.problems: list[PlaybookProblem] = []
        # Read by the directory-level checks even when the file has other problems.
        self.name: tuple[str, Node] | None = None
        self.match_is_empty = False
        self._constructor = SafeConstructor()

    # --- reporting ------------------------------------------------------------------------

    def problem_at(self, node: Node, message: str) -> PlaybookProblem:
        mark = node.start_mark
        return PlaybookProblem(self.file, mark.line + 1, mark.column + 1, message)

    def report(self, node: Node, message: str) -> None:
        self.problems.append(self.problem_at(node, message))

    # --- the file -------------------------------------------------------------------------

    def read(self, text: str, source: Path) -> Playbook | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            what = exc.problem or "syntax error"
            if exc.context and exc.context_mark:
                what += f" ({exc.context} at line {exc.context_mark.line + 1})"
            elif exc.context:
                what += f" ({exc.context})"
            line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
            self.problems.append(PlaybookProblem(self.file, line, column, f"invalid YAML: {what}"))
            return None
        except yaml.YAMLError as exc:
            self.problems.append(PlaybookProblem(self.file, None, None, f"invalid YAML: {exc}"))
            return None
        except RecursionError:
            self.problems.append(PlaybookProblem(self.file, None, None, "invalid YAML: nested too deeply"))
            return None
        if root is None:
            self.problems.append(PlaybookProblem(
                self.file, None, None, "the file is empty; expected a playbook mapping with "
                "keys " + ", ".join(sorted(self.TOP_KEYS))))
            return None

        keys = self.mapping(root, "the playbook", self.TOP_KEYS)
        if keys is None:
            return None
        name = self.playbook_name(keys.get("name"))
        description = self.optional(keys, "description", self.string, "")
        priority = self.optional(keys, "priority", self.integer, DEFAULT_PRIORITY)
        matchers = self.match(keys.get("match"))
        capture = self.capture(keys.get("capture"))
        scope = self.optional(keys, "scope", self.scope, ScopeSpec())
        runbooks = self.optional(keys, "runbooks", self.runbooks, ())
        channel = self.optional(keys, "channel", self.channel, None)
        notify = self.optional(keys, "notify", self.notify, NOTIFY_PAGE)
        prometheus = self.optional(keys, "prometheus", self.prometheus, PrometheusSpec())
        traces = self.optional(keys, "traces", self.traces, TraceSpec())
        if self.problems:
            return None
        assert name is not None and matchers is not None and capture is not None
        return Playbook(name=name, source=source, matchers=matchers, capture=capture,
                        scope=scope, runbooks=runbooks, description=description,
                        priority=priority, channel=channel, prometheus=prometheus,
                        traces=traces, notify=notify)

    # --- sections -------------------------------------------------------------------------

    def playbook_name(self, node: Node | None) -> str | None:
        if node is None:
            return None
        name = self.string(node, "name")
        if name is None:
            return None
        if not _NAME.fullmatch(name):
            self.report(node, f"invalid playbook name {name!r}: use lower-case letters, digits "
                              "and '-' only (e.g. llm-ttft-burn)")
            return None
        self.name = (name, node)
        return name

    def match(self, node: Node | None) -> tuple[Matcher, ...] | None:
        if node is None:
            return None
        items = self.sequence(node, "match", "a list of Alertmanager matchers such as "
                                             'alertname=~"LLM.*Burn"; [] matches every alert')
        if items is None:
            return None
        self.match_is_empty = not items
        found: list[Matcher] = []
        for i, item in enumerate(items):
            text = self.string(item, f"match[{i}]")
            if text is None:
                continue
            try:
                found.append(parse_matcher(text))
            except MatcherError as exc:
                self.report(item, f"invalid matcher {text!r}: {exc}")
        return tuple(found)

    def capture(self, node: Node | None) -> CaptureSpec | None:
        if node is None:
            return None
        keys = self.mapping(node, "capture", self.CAPTURE_KEYS)
        if keys is None:
            return None
        probes = self.probes(keys.get("probes"))
        duration = self.optional(keys, "duration", lambda n, what: self.duration(
            n, what, DURATION_BOUNDS_S), DEFAULT_DURATION_S, prefix="capture.")
        baseline = self.optional(keys, "baseline", lambda n, what: self.duration(
            n, what, BASELINE_BOUNDS_S), DEFAULT_BASELINE_S, prefix="capture.")
        if probes is None or duration is None or baseline is None:
            return None
        return CaptureSpec(probes=probes, duration_s=duration, baseline_s=baseline)

    def probes(self, node: Node | None) -> tuple[str, ...] | None:
        if node is None:
            return None
        items = self.sequence(node, "capture.probes", "a list of probe names")
        if items is None:
            return None
        if not items:
            self.report(node, "capture.probes is empty; list at least one probe, from: "
                              + ", ".join(sorted(self.known_probes)))
            return None
        probes: list[str] = []
        for i, item in enumerate(items):
            probe = self.string(item, f"capture.probes[{i}]")
            if probe is None:
                continue
            if probe not in self.known_probes:
                # The full list is short and already shows the near miss; no "did you mean".
                self.report(item, f"unknown probe {probe!r}; expected one of: "
                                  + ", ".join(sorted(self.known_probes)))
            elif probe in probes:
                self.report(item, f"probe {probe!r} is listed twice")
            else:
                probes.append(probe)
        return tuple(probes)

    def duration(self, node: Node, what: str, bounds: tuple[float, float]) -> float | None:
        value = self.scalar(node, what, (_TAG + "str", _TAG + "int", _TAG + "float"),
                            'a duration such as "10s", "500ms", "2m" or a number of seconds')
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.report(node, f"{what}: {exc}")
            return None
        low, high = bounds
        if not low <= seconds <= high:
            self.report(node, f"{what} {value!r} is out of bounds; it must be between "
                              f"{low:g}s and {high:g}s")
            return None
        return seconds

    def scope(self, node: Node, what: str) -> ScopeSpec | None:
        keys = self.mapping(node, what, self.SCOPE_KEYS)
        if keys is None:
            return None
        default = ScopeSpec()
        values: dict[str, Any] = {}
        for key in ("pid_labels", "cgroup_labels", "port_labels", "container_id_labels"):
            values[key] = self.optional(keys, key, self.label_names, getattr(default, key),
                                        prefix="scope.")
        for key in KUBE_LABEL_KEYS:
            values[key] = self.optional(keys, key, self.label_name_or_none, None, prefix="scope.")
        if any(v is _INVALID for v in values.values()):
            return None
        return ScopeSpec(**values)

    def label_names(self, node: Node, what: str) -> tuple[str, ...] | object:
        items = self.sequence(node, what, "a list of label names, e.g. [pid]")
        if items is None:
            return _INVALID
        names = [self.label_name(item, f"{what}[{i}]") for i, item in enumerate(items)]
        if any(n is None for n in names):
            return _INVALID
        return tuple(n for n in names if n is not None)

    def label_name_or_none(self, node: Node, what: str) -> str | None | object:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "null":
            return None  # explicitly unset, e.g. no Kubernetes in local mode
        name = self.label_name(node, what)
        return _INVALID if name is None else name

    def label_name(self, node: Node, what: str) -> str | None:
        name = self.string(node, what)
        if name is None:
            return None
        if not LABEL_NAME.fullmatch(name):
            self.report(node, f"{what}: invalid label name {name!r}; label names match "
                              f"{LABEL_NAME.pattern}")
            return None
        return name

    def runbooks(self, node: Node, what: str) -> tuple[Runbook, ...] | None:
        items = self.sequence(node, what, "a list of {title, url} mappings")
        if items is None:
            return None
        found: list[Runbook] = []
        for i, item in enumerate(items):
            keys = self.mapping(item, f"runbooks[{i}]", self.RUNBOOK_KEYS)
            if keys is None:
                continue
            title = self.string(keys["title"], f"runbooks[{i}].title") if "title" in keys else None
            url = self.url(keys["url"], f"runbooks[{i}].url") if "url" in keys else None
            if title is not None and url is not None:
                found.append(Runbook(title=title, url=url))
        return tuple(found) if len(found) == len(items) else None

    def url(self, node: Node, what: str) -> str | None:
        text = self.string(node, what)
        if text is None:
            return None
        try:
            parts = urlsplit(text)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            self.report(node, f"{what}: {text!r} is not an http(s) URL; write it in full, "
                              "e.g. https://runbooks.example.com/llm/ttft-burn")
            return None
        return text

    def prometheus(self, node: Node, what: str) -> PrometheusSpec | None:
        # Sections return None once a problem is reported; read() then builds no playbook.
        keys = self.mapping(node, what, self.PROMETHEUS_KEYS)
        if keys is None:
            return None
        step = self.optional(keys, "step", lambda n, w: self.duration(n, w, STEP_BOUNDS_S), None,
                             prefix="prometheus.")
        queries = self.prom_queries(keys["queries"]) if "queries" in keys else None
        if queries is None:
            return None
        return PrometheusSpec(queries=queries, step_s=step)

    def prom_queries(self, node: Node) -> tuple[PromQuery, ...] | None:
        items = self.sequence(node, "prometheus.queries",
                              "a list of {name, title, expr, kind, unit} mappings")
        if items is None:
            return None
        if not items:
            self.report(node, "prometheus.queries is empty; list at least one query or leave out "
                              "the prometheus section")
            return None
        first_by_name: dict[str, str] = {}
        found: list[PromQuery] = []
        for i, item in enumerate(items):
            what = f"prometheus.queries[{i}]"
            keys = self.mapping(item, what, self.QUERY_KEYS)
            if keys is None:
                continue
            name = self.query_name(keys["name"], what, first_by_name) if "name" in keys else None
            title = self.string(keys["title"], f"{what}.title") if "title" in keys else None
            expr = self.expr(keys["expr"], f"{what}.expr") if "expr" in keys else None
            kind = self.kind(keys["kind"], f"{what}.kind") if "kind" in keys else None
            unit = self.optional(keys, "unit", self.string, "", prefix=f"{what}.")
            if name is not None and title is not None and expr is not None and kind is not None and unit is not None:
                found.append(PromQuery(name=name, title=title, expr=expr, unit=unit, kind=kind))
        return tuple(found) if len(found) == len(items) else None

    def query_name(self, node: Node, what: str, first_by_name: dict[str, str]) -> str | None:
        name = self.string(node, f"{what}.name")
        if name is None:
            return None
        if not _QUERY_NAME.fullmatch(name):
            self.report(node, f"{what}.name: invalid query name {name!r}: use lower-case letters, "
                              "digits and '_', starting with a letter (e.g. burn_rate_long)")
            return None
        if name in first_by_name:
            self.report(node, f"{what}.name: duplicate query name {name!r}; already used by "
                              f"{first_by_name[name]}")
            return None
        first_by_name[name] = what
        return name

    def expr(self, node: Node, what: str) -> str | None:
        expr = self.string(node, what)
        if expr is None:
            return None
        if not expr.strip():
            self.report(node, f"{what} is empty; write a PromQL expression, e.g. "
                              'sum(rate(llm_requests_total{service="$service"}[5m]))')
            return None
        try:
            parse_expr(expr)
        except ExprTemplateError as exc:
            self.report(node, f"{what}: {exc}")
            return None
        return expr

    def kind(self, node: Node, what: str) -> str | None:
        kind = self.string(node, what)
        if kind is None:
            return None
        if kind not in PROM_KINDS:
            self.report(node, f"{what}: unknown kind {kind!r}; expected one of: "
                              + ", ".join(PROM_KINDS))
            return None
        return kind

    def traces(self, node: Node, what: str) -> TraceSpec | None:
        keys = self.mapping(node, what, self.TRACES_KEYS)
        if keys is None:
            return None
        labels = self.optional(keys, "service_labels", self.label_names, DEFAULT_SERVICE_LABELS,
                               prefix="traces.")
        if labels is _INVALID:
            return None
        if not labels:
            self.report(keys["service_labels"], "traces.service_labels is empty; name at least one "
                                                "label, e.g. [service]")
            return None
        return TraceSpec(service_labels=labels)

    def notify(self, node: Node, what: str) -> str | None:
        value = self.string(node, what)
        if value is not None and value not in NOTIFY_MODES:
            self.report(node, f"notify must be one of {', '.join(NOTIFY_MODES)}, got {value!r}")
            return None
        return value

    def channel(self, node: Node, what: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "null":
            # The usual cause: `channel: #llm` — an unquoted '#' starts a YAML comment.
            self.report(node, 'channel is empty; quote channel names: channel: "#llm-incidents"')
            return None
        return self.string(node, what)

    # --- generic node readers -------------------------------------------------------------

    def optional(self, keys: dict[str, Node], key: str, read: Any, default: Any,
                 prefix: str = "") -> Any:
        """``read(node, name)`` when ``key`` is present, else ``default``."""
        node = keys.get(key)
        return default if node is None else read(node, prefix + key)

    def mapping(self, node: Node, what: str, allowed: dict[str, bool]) -> dict[str, Node] | None:
        """The key -> value-node map, with unknown, duplicate and missing keys reported."""
        if not isinstance(node, MappingNode):
            self.report(node, f"{what} must be a mapping with keys "
                              f"{', '.join(sorted(allowed))}; got {_describe(node)}")
            return None
        keys: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str"):
                self.report(key_node, f"keys in {what} must be strings, got {_describe(key_node)}")
                continue
            key = key_node.value
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                self.report(key_node, f"unknown key {key!r} in {what}"
                                      + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                      + "; allowed keys: " + ", ".join(sorted(allowed)))
            elif key in keys:
                self.report(key_node, f"duplicate key {key!r} in {what}")
            else:
                keys[key] = value_node
        for key, required in allowed.items():
            if required and key not in keys:
                self.report(node, f"missing required key {key!r} in {what}")
        return keys

    def sequence(self, node: Node, what: str, expected: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.report(node, f"{what} must be {expected}; got {_describe(node)}")
            return None
        return list(node.value)

    def scalar(self, node: Node, what: str, tags: tuple[str, ...], expected: str) -> Any:
        if not (isinstance(node, ScalarNode) and node.tag in tags):
            self.report(node, f"{what} must be {expected}; got {_describe(node)}")
            return None
        try:
            return self._constructor.construct_object(node)
        except ValueError as exc:  # an integer of more than 4,300 digits
            self.report(node, f"{what} must be {expected}; this value cannot be read ({str(exc).split(';')[0]})")
            return None

    def string(self, node: Node, what: str) -> str | None:
        return self.scalar(node, what, (_TAG + "str",), "a string")

    def integer(self, node: Node, what: str) -> int | None:
        return self.scalar(node, what, (_TAG + "int",), "an integer")


# Marks "already reported" where None is a legal value (an unset namespace label).
_INVALID = object()
