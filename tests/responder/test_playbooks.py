"""Playbook loading, validation (with line numbers) and selection."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from responder.playbooks import (
    DEFAULT_SERVICE_LABELS,
    CaptureSpec,
    Playbook,
    PlaybookLoadError,
    PlaybookProblem,
    PrometheusSpec,
    PromQuery,
    ScopeSpec,
    TraceSpec,
    load_playbooks,
    parse_duration,
    render_query,
    select_playbook,
    skip_reason,
    validate_directory,
)
from responder.playbooks.matchers import parse_matcher

# The probe names the shipped playbooks use; the real catalog lives in capture/.
PROBES = {"tcp_retrans", "tcp_reset", "tcp_connect", "runq_latency", "oom_kill"}
SHIPPED = Path(__file__).resolve().parents[2] / "playbooks"

FALLBACK = """\
name: fallback
priority: 0
match: []
capture:
  probes: [tcp_retrans]
"""

GOOD = """\
name: llm-ttft
description: TTFT burn
priority: 50
match:
  - alertname=~"LLMTTFT.*"
  - severity="page"
capture:
  probes:
    - tcp_retrans
    - runq_latency
  duration: 1500ms
  baseline: 2m
scope:
  pid_labels: [pid, process_id]
  namespace_label: namespace
runbooks:
  - title: TTFT
    url: https://runbooks.example.com/llm/ttft
channel: "#llm"
"""

# GOOD plus the metric and trace sections.
GOOD_PROM = GOOD + """\
prometheus:
  step: 15s
  queries:
    - name: burn_rate_long
      title: "Burn rate, long window"
      expr: 'llm_slo:$slo:burn_rate${long_window}{service="$service"}'
      unit: "x"
      kind: burn_rate
    - name: chat_share
      title: Chat share
      expr: 'sum(rate(x{path=~".*/chat$$",service="$service"}[5m]))'
      kind: signal
traces:
  service_labels: [service_name, app]
"""
# The labels the contract's burn-rate alerts carry.
ALERT = {"alertname": "LLMErrorBurn", "severity": "page", "slo": "errors", "long_window": "1h",
         "short_window": "5m", "service": "chat"}


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``: where the problem must point."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def only_problem(directory: Path) -> PlaybookProblem:
    problems = validate_directory(directory, PROBES)
    assert len(problems) == 1, [p.format() for p in problems]
    return problems[0]


# --- the shipped playbooks ----------------------------------------------------------------

def test_shipped_playbooks_validate_clean() -> None:
    from capture.probes import CATALOG  # the shipped playbooks must fit the real catalog

    assert validate_directory(SHIPPED, set(CATALOG)) == []
    playbooks = load_playbooks(SHIPPED, set(CATALOG))
    by_name = {p.name: p for p in playbooks}
    assert set(by_name) >= {"llm-latency-burn", "llm-error-burn", "fallback"}
    assert playbooks[-1].name == "fallback" and playbooks[-1].is_fallback
    latency = by_name["llm-latency-burn"]
    assert latency.capture == CaptureSpec(
        ("tcp_retrans", "tcp_reset", "tcp_connect", "tcp_flow", "dns", "tls_http", "backend_latency", "runq_latency",
         "cpu_throttle", "oom_kill", "memory_pressure"), duration_s=10.0, baseline_s=60.0)
    assert latency.scope.pod_label == "pod" and latency.scope.namespace_label == "namespace"
    assert len(latency.runbooks) == 2
    assert all(r.url.startswith("https://runbooks.example.com/") for r in latency.runbooks)
    assert latency.source.name == "llm-latency-burn.yaml"

    errors = by_name["llm-error-burn"]
    assert by_name["fallback"].priority < errors.priority < latency.priority
    assert errors.capture == latency.capture and errors.scope == latency.scope
    assert errors.channel == latency.channel == "#llm-incidents"
    # The comment says why 429s land here: provider throttling burns the error budget.
    assert "429" in errors.source.read_text().split("name:")[0]


def test_shipped_playbooks_query_the_contract_rules() -> None:
    from capture.probes import CATALOG

    by_name = {p.name: p for p in load_playbooks(SHIPPED, set(CATALOG))}
    for name, slo in (("llm-latency-burn", "ttft"), ("llm-error-burn", "errors")):
        prom = by_name[name].prometheus
        assert prom.step_s is None  # resolution follows the windows
        names = [q.name for q in prom.queries]
        assert names[:2] == ["burn_rate_long", "burn_rate_short"] and "request_rate" in names
        rendered = {q.name: render_query(q, {**ALERT, "slo": slo}) for q in prom.queries}
        assert rendered["burn_rate_long"] == f'llm_slo:{slo}:burn_rate1h{{service="chat"}}'
        assert rendered["burn_rate_short"] == f'llm_slo:{slo}:burn_rate5m{{service="chat"}}'
        assert rendered["request_rate"] == 'sum(rate(llm_requests_total{service="chat"}[5m]))'
        assert [q.kind for q in prom.queries if q.kind != "signal"] == ["burn_rate", "burn_rate", "onset", "sli"]
        # every objective of the service, over the alert's short window
        assert rendered["burn_rate_any_objective"] == \
            'max({__name__=~"llm_slo:[a-z_]+:burn_rate5m", service="chat"})'
        assert all(r is not None and "$" not in r for r in rendered.values())
    # The fallback asks only for what any alert (alertname) or a service's alert (service) has.
    fallback = by_name["fallback"].prometheus.queries
    assert {label for q in fallback for label in q.placeholders} == {"alertname", "service"}
    assert [render_query(q, {"alertname": "KubeX"}) is not None for q in fallback] == [True, False, False, False]
    for p in by_name.values():
        assert p.traces == TraceSpec(("service", "service_name", "job"))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"alertname": "LLMTTFTBurnFast", "severity": "page"}, "llm-latency-burn"),
        ({"alertname": "LLMLatencyBurnSlow", "severity": "ticket"}, "llm-latency-burn"),
        ({"alertname": "LLME2ELatencyBurn1h", "severity": "page"}, "llm-latency-burn"),
        ({"alertname": "LLMTTFTBurnFast", "severity": "info"}, "fallback"),
        ({"alertname": "LLMErrorBurn", "severity": "page"}, "llm-error-burn"),
        ({"alertname": "LLMErrorBurn", "severity": "ticket", "slo": "errors"}, "llm-error-burn"),
        ({"alertname": "LLMErrorBurnFast", "severity": "page"}, "llm-error-burn"),
        ({"alertname": "LLMErrorBurn", "severity": "info"}, "fallback"),
        ({"alertname": "KubePodCrashLooping", "severity": "page"}, "fallback"),
        ({}, "fallback"),
    ],
)
def test_shipped_selection(labels: dict[str, str], expected: str) -> None:
    from capture.probes import CATALOG

    chosen = select_playbook(load_playbooks(SHIPPED, set(CATALOG)), labels)
    assert chosen is not None and chosen.name == expected


# --- a well-formed directory --------------------------------------------------------------

def test_good_playbook_fields(tmp_path: Path) -> None:
    write(tmp_path, {"fallback.yaml": FALLBACK, "ttft.yaml": GOOD})
    ttft, fallback = load_playbooks(tmp_path, PROBES)
    assert ttft.name == "llm-ttft" and ttft.priority == 50
    assert ttft.matchers == (
        parse_matcher('alertname=~"LLMTTFT.*"'), parse_matcher('severity="page"'))
    assert ttft.capture == CaptureSpec(("tcp_retrans", "runq_latency"), 1.5, 120.0)
    assert ttft.scope == ScopeSpec(pid_labels=("pid", "process_id"), namespace_label="namespace")
    assert ttft.scope.first_present(ttft.scope.pid_labels, {"process_id": "42"}) == "42"
    assert ttft.channel == "#llm" and ttft.source == tmp_path / "ttft.yaml"
    assert fallback.capture.duration_s == 10.0 and fallback.scope == ScopeSpec()
    assert fallback.runbooks == () and fallback.channel is None


def test_selection_order_priority_then_file_name(tmp_path: Path) -> None:
    same = ("name: {name}\npriority: {priority}\nmatch: ['team=\"llm\"']\n"
            "capture: {{probes: [tcp_retrans]}}\n")
    write(tmp_path, {
        "fallback.yaml": FALLBACK,
        "b.yaml": same.format(name="b", priority=10),
        "a.yaml": same.format(name="a", priority=10),
        "z.yaml": same.format(name="z", priority=20),
        "default.yml": "name: default-priority\nmatch: ['team=\"llm\"', 'x!=\"\"']\n"
                       "capture: {probes: [tcp_retrans]}\n",
    })
    playbooks = load_playbooks(tmp_path, PROBES)
    assert [p.name for p in playbooks] == ["default-priority", "z", "a", "b", "fallback"]

    def chosen(labels: dict[str, str]) -> str | None:
        p = select_playbook(list(reversed(playbooks)), labels)
        return p.name if p else None

    assert chosen({"team": "llm", "x": "1"}) == "default-priority"
    assert chosen({"team": "llm"}) == "z"
    assert chosen({"team": "infra"}) == "fallback"
    assert select_playbook([p for p in playbooks if not p.is_fallback], {"team": "infra"}) is None


def test_parse_duration() -> None:
    assert parse_duration("10s") == 10.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120.0
    assert parse_duration("1m30s") == 90.0
    assert parse_duration(7) == 7.0
    for bad in ("10", "ten seconds", "10h", True, None, "s"):
        with pytest.raises(ValueError, match="expected a duration like 10s"):
            parse_duration(bad)


# --- one problem kind per test: right file, right line ------------------------------------

def check(tmp_path: Path, text: str, needle: str, fragment: str, column: int | None = None) -> None:
    write(tmp_path, {"fallback.yaml": FALLBACK, "broken.yaml": text})
    problem = only_problem(tmp_path)
    assert problem.file == str(tmp_path / "broken.yaml")
    assert problem.line == line_of(text, needle), problem.format()
    assert fragment in problem.message, problem.format()
    if column is not None:
        assert problem.column == column
    with pytest.raises(PlaybookLoadError) as info:
        load_playbooks(tmp_path, PROBES)
    assert info.value.problems == [problem]
    assert problem.format() in str(info.value)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    text = GOOD.replace("  duration: 1500ms", "  duration: [1500ms")
    write(tmp_path, {"fallback.yaml": FALLBACK, "broken.yaml": text})
    problem = only_problem(tmp_path)
    assert problem.file == str(tmp_path / "broken.yaml")
    assert problem.message.startswith("invalid YAML:")
    # The parser notices at the next key, two lines below the unclosed bracket.
    assert line_of(text, "[1500ms") <= problem.line <= line_of(text, "baseline")


def test_yaml_tab_indentation_error(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("  baseline: 2m", "\tbaseline: 2m"), "baseline",
          "invalid YAML")


def test_unknown_probe_points_at_the_list_item(tmp_path: Path) -> None:
    text = GOOD.replace("    - runq_latency", "    - tcp_retrnas")
    check(tmp_path, text, "tcp_retrnas",
          "unknown probe 'tcp_retrnas'; expected one of: oom_kill, runq_latency, tcp_connect, tcp_reset, tcp_retrans",
          column=7)
    problem = only_problem(tmp_path)
    line = line_of(text, "tcp_retrnas")
    assert problem.format() == (
        f"{tmp_path / 'broken.yaml'}:{line}:7: unknown probe 'tcp_retrnas'; "
        "expected one of: oom_kill, runq_latency, tcp_connect, tcp_reset, tcp_retrans")


def test_unknown_probe_in_flow_list(tmp_path: Path) -> None:
    text = FALLBACK.replace("name: fallback", "name: other").replace(
        "[tcp_retrans]", "[tcp_retrans, oom]")
    check(tmp_path, text, "oom", "unknown probe 'oom'", column=25)


def test_unknown_key_says_which_are_allowed(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("  duration: 1500ms", "  durations: 1500ms"), "durations",
          "unknown key 'durations' in capture (did you mean 'duration'?); "
          "allowed keys: baseline, duration, probes")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    check(tmp_path, GOOD + "severity: page\n", "severity: page",
          "unknown key 'severity' in the playbook")


def test_missing_required_key(tmp_path: Path) -> None:
    text = GOOD.replace("match:\n", "matches:\n")
    write(tmp_path, {"fallback.yaml": FALLBACK, "broken.yaml": text})
    messages = {p.message for p in validate_directory(tmp_path, PROBES)}
    assert "missing required key 'match' in the playbook" in messages
    assert any(m.startswith("unknown key 'matches'") for m in messages)


def test_missing_required_key_in_runbook(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("    url: https://runbooks.example.com/llm/ttft\n", ""),
          "- title: TTFT", "missing required key 'url' in runbooks[0]")


def test_duplicate_key(tmp_path: Path) -> None:
    check(tmp_path, GOOD + "priority: 7\n", "priority: 7", "duplicate key 'priority'")


@pytest.mark.parametrize(
    ("old", "new", "needle", "fragment"),
    [
        ("priority: 50", "priority: high", "priority", "priority must be an integer; got a string"),
        ("priority: 50", "priority: true", "priority", "got a boolean"),
        ("name: llm-ttft", "name: 42", "name", "name must be a string; got an integer"),
        ("  probes:\n    - tcp_retrans\n    - runq_latency", "  probes: tcp_retrans", "probes",
         "capture.probes must be a list of probe names; got a string"),
        ('  - severity="page"', "  - severity: page", "severity",
         "match[1] must be a string; got a mapping"),
        ("match:\n  - alertname", "match: alertname\nx:\n  - alertname", "match:",
         "match must be a list of Alertmanager matchers"),
        ("  pid_labels: [pid, process_id]", "  pid_labels: pid", "pid_labels",
         "scope.pid_labels must be a list of label names"),
        ("  namespace_label: namespace", "  namespace_label: kube-namespace", "namespace_label",
         "scope.namespace_label: invalid label name 'kube-namespace'"),
        ("runbooks:\n  - title", "runbooks:\n  - https://x.example.com\n  - title", "https://x",
         "runbooks[0] must be a mapping with keys title, url; got a string"),
        ('channel: "#llm"', "channel: #llm", "channel", "quote channel names"),
    ],
)
def test_wrong_types(tmp_path: Path, old: str, new: str, needle: str, fragment: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new)
    write(tmp_path, {"fallback.yaml": FALLBACK, "broken.yaml": text})
    problems = validate_directory(tmp_path, PROBES)
    hit = [p for p in problems if fragment in p.message]
    assert hit, [p.format() for p in problems]
    assert hit[0].file == str(tmp_path / "broken.yaml")
    assert hit[0].line == line_of(text, needle), hit[0].format()


def test_not_a_mapping(tmp_path: Path) -> None:
    check(tmp_path, "- name: x\n", "- name", "the playbook must be a mapping")


def test_empty_file(tmp_path: Path) -> None:
    write(tmp_path, {"fallback.yaml": FALLBACK, "empty.yaml": "# nothing yet\n"})
    problem = only_problem(tmp_path)
    assert problem.file == str(tmp_path / "empty.yaml") and "the file is empty" in problem.message


def test_bad_matcher_uses_the_matcher_message(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace('alertname=~"LLMTTFT.*"', 'alertname=~"LLM(TTFT"'), "LLM(TTFT",
          "invalid matcher 'alertname=~\"LLM(TTFT\"': invalid regular expression 'LLM(TTFT'")


def test_matcher_without_operator(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace('  - severity="page"', "  - severity"), "  - severity",
          "expected one of =, !=, =~, !~ after label name 'severity'", column=5)


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("duration: 1500ms", "duration: 3m", "capture.duration '3m' is out of bounds; it must be "
                                            "between 1s and 120s"),
        ("duration: 1500ms", "duration: 0", "between 1s and 120s"),
        ("duration: 1500ms", "duration: 100ms", "between 1s and 120s"),
        ("duration: 1500ms", "duration: 10 seconds", "expected a duration like 10s, 500ms or 2m"),
        ("baseline: 2m", "baseline: 11m", "capture.baseline '11m' is out of bounds; it must be "
                                          "between 0s and 600s"),
        ("baseline: 2m", "baseline: -1", "between 0s and 600s"),
    ],
)
def test_duration_bounds(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    assert old in GOOD
    check(tmp_path, GOOD.replace(old, new), new, fragment)


def test_minimum_bounds_are_inclusive(tmp_path: Path) -> None:
    text = GOOD.replace("duration: 1500ms", "duration: 1s").replace("baseline: 2m", "baseline: 0")
    write(tmp_path, {"fallback.yaml": FALLBACK, "ok.yaml": text})
    assert validate_directory(tmp_path, PROBES) == []


@pytest.mark.parametrize("url", ["ftp://runbooks.example.com/x", "runbooks.example.com/x",
                                 "https://", "javascript:alert(1)"])
def test_bad_url(tmp_path: Path, url: str) -> None:
    text = GOOD.replace("https://runbooks.example.com/llm/ttft", url)
    check(tmp_path, text, "url:", "runbooks[0].url: " + repr(url) + " is not an http(s) URL")


def test_bad_playbook_name(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("name: llm-ttft", "name: LLM_TTFT"), "name:",
          "invalid playbook name 'LLM_TTFT'")


def test_duplicate_playbook_names(tmp_path: Path) -> None:
    write(tmp_path, {"fallback.yaml": FALLBACK, "a.yaml": GOOD, "b.yaml": "\n\n" + GOOD})
    problem = only_problem(tmp_path)
    assert problem.file == str(tmp_path / "b.yaml") and problem.line == 3
    assert problem.message == (
        f"duplicate playbook name 'llm-ttft'; already used in {tmp_path / 'a.yaml'}")


def test_no_fallback_is_reported_against_the_directory(tmp_path: Path) -> None:
    write(tmp_path, {"ttft.yaml": GOOD})
    problem = only_problem(tmp_path)
    assert (problem.file, problem.line, problem.column) == (str(tmp_path), None, None)
    assert "no fallback playbook" in problem.message
    assert problem.format() == f"{tmp_path}: {problem.message}"


def test_empty_or_missing_directory(tmp_path: Path) -> None:
    assert "no playbook files" in only_problem(tmp_path).message
    assert "not a directory" in only_problem(tmp_path / "nope").message


def test_all_problems_across_all_files_are_reported(tmp_path: Path) -> None:
    write(tmp_path, {
        "a.yaml": GOOD.replace("    - runq_latency", "    - tcp_retrnas").replace(
            "duration: 1500ms", "duration: 500ms"),
        "b.yaml": "name: b\nmatch: ['x']\ncapture: {probes: [nope]}\nextra: 1\n",
        "c.yaml": "name: [unclosed\n",
    })
    problems = validate_directory(tmp_path, PROBES)
    summary = [(Path(p.file).name, p.line) for p in problems]
    assert summary == [
        ("a.yaml", line_of(GOOD, "tcp_retrans") + 1),  # the probe
        ("a.yaml", line_of(GOOD, "duration")),  # 500ms < 1s
        ("b.yaml", 2),  # matcher 'x'
        ("b.yaml", 3),  # probe 'nope'
        ("b.yaml", 4),  # unknown key 'extra'
        ("c.yaml", 2),  # YAML syntax
        (tmp_path.name, None),  # no fallback
    ]


def test_format_matches_the_documented_shape() -> None:
    problem = PlaybookProblem("playbooks/foo.yaml", 12, 5, "unknown probe 'tcp_retrnas'; "
                              "expected one of: oom_kill, runq_latency, tcp_connect, tcp_reset, tcp_retrans")
    assert problem.format() == ("playbooks/foo.yaml:12:5: unknown probe 'tcp_retrnas'; "
                                "expected one of: oom_kill, runq_latency, tcp_connect, tcp_reset, tcp_retrans")


def test_playbook_matches() -> None:
    p = Playbook(name="x", source=Path("x.yaml"), matchers=(parse_matcher('a="1"'),),
                 capture=CaptureSpec(("tcp_retrans",)))
    assert p.matches({"a": "1"}) and not p.matches({"a": "2"}) and not p.is_fallback


# --- metric and trace sections --------------------------------------------------------------

def test_prometheus_and_traces_sections(tmp_path: Path) -> None:
    write(tmp_path, {"fallback.yaml": FALLBACK, "ttft.yaml": GOOD_PROM})
    ttft, fallback = load_playbooks(tmp_path, PROBES)
    assert ttft.prometheus == PrometheusSpec(step_s=15.0, queries=(
        PromQuery("burn_rate_long", "Burn rate, long window",
                  'llm_slo:$slo:burn_rate${long_window}{service="$service"}', "x", "burn_rate"),
        PromQuery("chat_share", "Chat share", 'sum(rate(x{path=~".*/chat$$",service="$service"}[5m]))', "",
                  "signal"),
    ))
    assert ttft.traces.service_labels == ("service_name", "app")
    assert ttft.traces.service({"app": "a", "service_name": "", "service": "s"}) == "a"
    # Without the sections: no queries, and the usual service labels.
    assert fallback.prometheus == PrometheusSpec() and fallback.prometheus.queries == ()
    assert fallback.traces.service_labels == DEFAULT_SERVICE_LABELS == ("service", "service_name", "job")
    assert fallback.traces.service({"job": "j", "service": "s"}) == "s"
    assert fallback.traces.service({"pod": "p"}) is None


def test_render_query_fills_labels(tmp_path: Path) -> None:
    write(tmp_path, {"fallback.yaml": FALLBACK, "ttft.yaml": GOOD_PROM})
    burn, share = load_playbooks(tmp_path, PROBES)[0].prometheus.queries
    assert burn.placeholders == ("slo", "long_window", "service")
    assert render_query(burn, ALERT) == 'llm_slo:errors:burn_rate1h{service="chat"}'
    # $$ is a literal dollar (a regex anchor here).
    assert render_query(share, ALERT) == 'sum(rate(x{path=~".*/chat$",service="chat"}[5m]))'


@pytest.mark.parametrize(("value", "inside"), [
    ('a"b', 'a\\"b'),
    ("a\\b", "a\\\\b"),
    ("a\nb", "a\\nb"),
    ("a\rb", "a\\rb"),
    ('chat"} or vector(1) #', 'chat\\"} or vector(1) #'),
    ('x\\', 'x\\\\'),  # a trailing backslash must not escape the closing quote
])
def test_label_values_cannot_leave_their_string(value: str, inside: str) -> None:
    # test_prometheus.py runs the hostile ones through Prometheus's own parser.
    q = PromQuery("q", "q", 'up{service="$service"}')
    assert render_query(q, {"service": value}) == f'up{{service="{inside}"}}'


def test_bare_placeholders_take_only_plain_words() -> None:
    q = PromQuery("q", "q", 'llm_slo:$slo:burn_rate$long_window{service="$service"}')
    labels = {**ALERT, "slo": "errors{} or vector(1)"}
    assert render_query(q, labels) is None
    assert skip_reason(q, labels) == ("skipped: label 'slo' = 'errors{} or vector(1)' cannot be used outside "
                                      "a quoted string (only letters, digits, '_' and ':')")


def test_missing_or_empty_label_skips_the_query() -> None:
    q = PromQuery("q", "q", 'llm_slo:$slo:burn_rate$long_window{service="${service}"}')
    assert render_query(q, {"slo": "errors", "service": "chat"}) is None
    assert skip_reason(q, {"slo": "errors", "service": "chat"}) == (
        "skipped: the alert has no 'long_window' label for this query")
    assert skip_reason(q, {"slo": "", "long_window": "1h"}) == (
        "skipped: the alert has no 'slo', 'service' labels for this query")
    assert skip_reason(q, ALERT) is None


@pytest.mark.parametrize(
    ("old", "new", "needle", "fragment"),
    [
        ("    - name: chat_share", "    - name: burn_rate_long  # again", "# again",
         "prometheus.queries[1].name: duplicate query name 'burn_rate_long'; already used by "
         "prometheus.queries[0]"),
        ("kind: signal", "kind: gauge", "kind: gauge",
         "prometheus.queries[1].kind: unknown kind 'gauge'; expected one of: burn_rate, sli, signal"),
        ("    - name: chat_share", "    - name: Chat-Share", "Chat-Share",
         "prometheus.queries[1].name: invalid query name 'Chat-Share'"),
        ("      expr: 'sum(rate(x{path=~\".*/chat$$\",service=\"$service\"}[5m]))'", "      expr: ' '",
         "expr: ' '", "prometheus.queries[1].expr is empty"),
        ("chat$$", "chat$", "chat$", "prometheus.queries[1].expr: invalid placeholder at character 26: '$' "
                                     "must be followed by a label name ($service or ${service}); write $$ "
                                     "for a literal $"),
        ("${long_window}", "${long_window", "burn_rate${long_window",
         "needs a label name and a closing brace"),
        ("""      expr: 'llm_slo:$slo:burn_rate${long_window}{service="$service"}'""",
         """      expr: "up{service='$service'}\"""", "service='$service'",
         "placeholder $service is inside a '-quoted string"),
        ("      kind: burn_rate\n", "", "- name: burn_rate_long",
         "missing required key 'kind' in prometheus.queries[0]"),
        ("      unit: \"x\"", "      units: \"x\"", "units", "unknown key 'units' in prometheus.queries[0] "
                                                           "(did you mean 'unit'?)"),
        ("  step: 15s", "  step: 500ms", "step", "prometheus.step '500ms' is out of bounds; it must be "
                                                 "between 1s and 3600s"),
        ("      kind: signal\n", "      kind: signal\n  extra: 1\n", "extra",
         "unknown key 'extra' in prometheus; allowed keys: queries, step"),
        ("  service_labels: [service_name, app]", "  service_labels: []", "service_labels",
         "traces.service_labels is empty"),
        ("  service_labels: [service_name, app]", "  service_labels: [service-name]", "service_labels",
         "traces.service_labels[0]: invalid label name 'service-name'"),
        ("traces:\n  service_labels: [service_name, app]", "traces: [service]", "traces:",
         "traces must be a mapping with keys service_labels; got a list"),
    ],
)
def test_prometheus_and_traces_problems(tmp_path: Path, old: str, new: str, needle: str, fragment: str) -> None:
    assert old in GOOD_PROM, old
    text = GOOD_PROM.replace(old, new, 1)
    check(tmp_path, text, needle, fragment)


def test_empty_query_list(tmp_path: Path) -> None:
    start = GOOD_PROM.index("  queries:")
    text = GOOD_PROM[:start] + "  queries: []\ntraces:\n  service_labels: [app]\n"
    check(tmp_path, text, "queries: []", "prometheus.queries is empty; list at least one query")


def test_missing_query_list(tmp_path: Path) -> None:
    text = GOOD + "prometheus:\n  step: 30s\n"
    check(tmp_path, text, "step: 30s", "missing required key 'queries' in prometheus")
