"""Prometheus rules for the LLM SLOs: recording rules for each SLI's ratio and burn rate, and
multiwindow, multi-burn-rate alerts, as the YAML ``llmslo rules generate`` prints.

This module owns the rule and alert names the rest of the responder relies on (see the SLO
section of the issue contract); playbooks query these names and the lab service exposes the
metrics they read.

SLIs, each a "bad share" in [0, 1] per service over a window:

- ``errors``: requests whose ``code`` matches ``error_codes`` (default ``5..|429``: server errors
  and rate limiting, which the user experiences as a failure) over all requests. Other 4xx are the
  client's mistake and do not spend the budget.
- ``ttft``: requests whose time to first token exceeded ``ttft_threshold_s``, read as
  ``1 - bucket{le=threshold} / count`` from the histogram.
- ``latency``: the same for end-to-end duration and ``latency_threshold_s``.

A histogram can only answer "how many were slower than T" for a T that is one of its bucket
bounds. The threshold must therefore be a bucket bound of the service's histogram; if it is not,
the ``le`` matcher selects nothing and the SLI has no series (silence, not a wrong number).
``RECOMMENDED_TTFT_BUCKETS`` and ``RECOMMENDED_LATENCY_BUCKETS`` contain the default thresholds.
Client libraries spell bounds differently (Go ``le="2"``, Python ``le="2.0"``), so the matcher
accepts both spellings.

Default objectives over 30 days: errors 99.5%, TTFT 99% within 2s, end-to-end latency 99%
within 10s. Burn rate = bad share / (1 - objective); a burn rate of 1 spends exactly the 30-day
budget in 30 days. Alerts (Google SRE workbook, chapter "Alerting on SLOs"):

- page when the burn is over 14.4x in both the last 1h and 5m (2% of the budget in an hour), or
  over 6x in both 6h and 30m (5% in six hours);
- ticket when it is over 1x in both 3d and 6h (10% in three days).

The long window makes the alert significant, the short one makes it stop soon after the burn does.

One more group, ``llm-kernel-early-warning`` (unless ``early_warning`` is off): the ticket-severity
alert ``LLMKernelEarlyWarning`` on the capture agents' ``llmslo_early_warning_began_at_seconds``
series (present while a warning fires, valued when its trouble began: the alert's ``began_at``), one
alert per workload and fault domain the agent's attribution model names on the workload's flight
recorder, before any SLO need burn. It has no ``for:``: the agent already holds a minimum
duration and hysteresis (``capture.early_warning``), and a second wait here would only delay it.

``window_scale`` shrinks every range and ``for:`` by the same factor while names and labels keep
the nominal window ("5m", "1h"...), so a lab can run the very same rules in seconds. A window must
still hold several scrapes for ``rate()`` to mean anything, so a scale that makes the 5m window
shorter than ``MIN_SCRAPES_PER_WINDOW`` scrape intervals is refused.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from capture.metrics import WORKLOAD_LABELS
from responder.playbooks.matchers import LABEL_NAME

SLO_PERIOD = "30d"
# (nominal name, seconds), shortest first
WINDOWS: tuple[tuple[str, int], ...] = (("5m", 300), ("30m", 1800), ("1h", 3600), ("6h", 21600), ("3d", 259200))
MIN_SCRAPES_PER_WINDOW = 4
DEFAULT_SCRAPE_INTERVAL_S = 15.0

DEFAULT_REQUESTS_METRIC = "llm_requests_total"
DEFAULT_TTFT_METRIC = "llm_time_to_first_token_seconds"
DEFAULT_LATENCY_METRIC = "llm_request_duration_seconds"
DEFAULT_ERROR_CODES = "5..|429"
DEFAULT_OBJECTIVES = {"errors": 0.995, "ttft": 0.99, "latency": 0.99}
DEFAULT_TTFT_THRESHOLD_S = 2.0
DEFAULT_LATENCY_THRESHOLD_S = 10.0
# Buckets that contain the default thresholds, for services instrumented to these rules.
RECOMMENDED_TTFT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
RECOMMENDED_LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class BurnAlert:
    """One alerting rule: burn above ``factor`` over both windows for ``for_s`` (nominal seconds)."""

    severity: str
    long_window: str
    short_window: str
    factor: float
    for_s: int


# `for:` filters a single bad evaluation; it grows with the long window so a slow-burn alert does
# not fire on a blip, and stays small against the time the long window needs to cross its factor.
BURN_ALERTS: tuple[BurnAlert, ...] = (
    BurnAlert("page", "1h", "5m", 14.4, 120),
    BurnAlert("page", "6h", "30m", 6.0, 900),
    BurnAlert("ticket", "3d", "6h", 1.0, 3600),
)

SLIS = ("errors", "ttft", "latency")
ALERT_NAMES = {"errors": "LLMErrorBurn", "ttft": "LLMTTFTBurn", "latency": "LLMLatencyBurn"}
_SLI_TITLES = {"errors": "error", "ttft": "time-to-first-token", "latency": "end-to-end latency"}
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_WINDOW_SECONDS = dict(WINDOWS)


EARLY_WARNING_ALERT = "LLMKernelEarlyWarning"
# Present while a warning fires, valued when the trouble began: the alert passes that on.
EARLY_WARNING_METRIC = "llmslo_early_warning_began_at_seconds"
# The annotation an alert may carry to say when its trouble began, earlier than Prometheus saw
# it (Unix seconds); the responder's baselines end there (responder.pipeline.gather).
BEGAN_AT_ANNOTATION = "began_at"
# What the alert keeps: the domain, the deciding signal and who (the agent's workload labels).
EARLY_WARNING_LABELS = ("domain", "signal", *WORKLOAD_LABELS)


class RulesError(ValueError):
    """A rules specification that cannot produce valid, meaningful rules; the message says why."""


def recording_rule_name(sli: str, kind: str, window: str) -> str:
    """``llm_slo:errors:burn_rate1h`` and friends (``kind`` is ratio_rate or burn_rate)."""
    return f"llm_slo:{sli}:{kind}{window}"


@dataclass(frozen=True)
class SloRulesSpec:
    """Everything the generated rules depend on. Validated on construction (``RulesError``)."""

    objective_errors: float = DEFAULT_OBJECTIVES["errors"]
    objective_ttft: float = DEFAULT_OBJECTIVES["ttft"]
    objective_latency: float = DEFAULT_OBJECTIVES["latency"]
    ttft_threshold_s: float = DEFAULT_TTFT_THRESHOLD_S
    latency_threshold_s: float = DEFAULT_LATENCY_THRESHOLD_S
    error_codes: str = DEFAULT_ERROR_CODES
    requests_metric: str = DEFAULT_REQUESTS_METRIC
    ttft_metric: str = DEFAULT_TTFT_METRIC
    latency_metric: str = DEFAULT_LATENCY_METRIC
    code_label: str = "code"
    service_label: str = "service"
    extra_group_labels: tuple[str, ...] = ()
    window_scale: float = 1.0
    scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S
    # Optional runbook link per alert; "{slo}", "{alertname}" and "{severity}" are filled in.
    runbook_url: str | None = None
    group_interval_s: float | None = None
    early_warning: bool = True  # the LLMKernelEarlyWarning group

    def __post_init__(self) -> None:
        for sli in SLIS:
            _check_objective(sli, self.objective(sli))
        for name, value in (("ttft threshold", self.ttft_threshold_s), ("latency threshold", self.latency_threshold_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise RulesError(f"{name} must be a positive number of seconds, got {value!r}")
        try:
            re.compile(self.error_codes)
        except re.error as e:
            raise RulesError(f"error codes {self.error_codes!r} is not a valid regular expression: {e}") from None
        if not self.error_codes:
            raise RulesError("error codes must be a non-empty regular expression, e.g. 5..|429")
        for what, name in (("requests metric", self.requests_metric), ("TTFT metric", self.ttft_metric),
                           ("latency metric", self.latency_metric)):
            if not _METRIC_NAME.fullmatch(name or ""):
                raise RulesError(f"{what} {name!r} is not a valid Prometheus metric name")
        labels = (self.code_label, self.service_label, *self.extra_group_labels)
        for name in labels:
            if not LABEL_NAME.fullmatch(name or "") or name.startswith("__"):
                raise RulesError(f"{name!r} is not a valid Prometheus label name")
        if "le" in labels or self.code_label in self.group_labels:
            raise RulesError("group-by labels must not include the code or le label")
        if len(set(self.group_labels)) != len(self.group_labels):
            raise RulesError(f"group-by labels repeat a label: {', '.join(self.group_labels)}")
        if not (isinstance(self.window_scale, (int, float)) and 0 < self.window_scale <= 1):
            raise RulesError(f"window scale must be in (0, 1], got {self.window_scale!r}")
        if not (math.isfinite(self.scrape_interval_s) and self.scrape_interval_s > 0):
            raise RulesError(f"scrape interval must be a positive duration, got {self.scrape_interval_s!r}")
        shortest_name, shortest_s = WINDOWS[0]
        scaled = format_duration(_scaled_ms(shortest_s, self.window_scale) / 1000)
        minimum_ms = MIN_SCRAPES_PER_WINDOW * self.scrape_interval_s * 1000
        if _scaled_ms(shortest_s, self.window_scale) < minimum_ms:
            lowest = minimum_ms / (shortest_s * 1000)
            raise RulesError(
                f"window scale {self.window_scale:g} makes the {shortest_name} window {scaled},"
                f" shorter than {MIN_SCRAPES_PER_WINDOW} scrape intervals of {format_duration(self.scrape_interval_s)}"
                f" ({format_duration(minimum_ms / 1000)}); use a scale of at least {lowest:.4g}"
                f" or a shorter scrape interval")
        if self.group_interval_s is not None and not self.group_interval_s > 0:
            raise RulesError(f"group interval must be a positive duration, got {self.group_interval_s!r}")

    def objective(self, sli: str) -> float:
        return {"errors": self.objective_errors, "ttft": self.objective_ttft, "latency": self.objective_latency}[sli]

    def range(self, window: str) -> str:
        """The PromQL range for a nominal window after scaling, e.g. ``1h`` or ``15s``."""
        return format_duration(_scaled_ms(_WINDOW_SECONDS[window], self.window_scale) / 1000)

    @property
    def group_labels(self) -> tuple[str, ...]:
        return (self.service_label, *self.extra_group_labels)


def _check_objective(sli: str, objective: Any) -> None:
    if not (isinstance(objective, (int, float)) and 0 < objective < 1):
        raise RulesError(f"{sli} objective must be between 0 and 1 exclusive (e.g. 0.995 for 99.5%), got {objective!r}")
    # A page at 14.4x needs a bad share of 14.4 * (1 - objective); above 100% it can never fire.
    top = max(a.factor for a in BURN_ALERTS)
    if top * (1 - objective) > 1:
        raise RulesError(f"{sli} objective {objective * 100:g}% is too loose to page: a {top:g}x burn would need "
                         f"{top * (1 - objective) * 100:.0f}% bad requests; use at least {(1 - 1 / top) * 100:.2f}%")


def _scaled_ms(seconds: float, scale: float) -> int:
    return round(seconds * scale * 1000)


def format_duration(seconds: float) -> str:
    """A Prometheus duration in whole milliseconds: ``3d``, ``1h``, ``1m15s``, ``1s250ms``, ``0s``."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def _number(value: float) -> str:
    # 1 - 0.995 is 0.0050000000000000044 in binary; the rules should say 0.005 (and 6, not 6.0).
    short = float(f"{value:.12g}")
    return str(int(short)) if short.is_integer() else repr(short)


def _string(value: str) -> str:
    """A PromQL double-quoted string literal (JSON escaping is valid Go/PromQL escaping)."""
    return json.dumps(value)


def le_spellings(bound: float) -> list[str]:
    """How client libraries write this bucket bound in ``le``: Go ``2``, Python/OpenMetrics ``2.0``."""
    from prometheus_client.utils import floatToGoString

    python = floatToGoString(bound)
    go = python[:-2] if python.endswith(".0") else python
    return sorted({python, go}, key=len)


def _le_matcher(bound: float) -> str:
    spellings = le_spellings(bound)
    if len(spellings) == 1:
        return f"le={_string(spellings[0])}"
    return "le=~" + _string("|".join(re.escape(s) for s in spellings))


def sli_ratio_expr(spec: SloRulesSpec, sli: str, window: str) -> str:
    """PromQL for one SLI's bad share over one (scaled) window, one series per group.

    Denominators are filtered with ``> 0`` instead of dividing blindly: without traffic,
    ``0 / 0`` would record NaN, which draws as gaps, averages to NaN in evidence and hides
    real zeros. The filter drops the group, so no traffic means no series.
    """
    rng = spec.range(window)
    by = ", ".join(spec.group_labels)
    if sli == "errors":
        total = f"sum by ({by}) (rate({spec.requests_metric}[{rng}]))"
        bad = (f"sum by ({by}) (rate({spec.requests_metric}"
               f"{{{spec.code_label}=~{_string(spec.error_codes)}}}[{rng}]))")
        # A service that has never failed has no error series at all; `or 0 * total` makes its
        # ratio 0 rather than absent, so "healthy" and "no data" stay distinguishable.
        expr = f"(\n  {bad}\n  or 0 * {total}\n)\n/\n({total} > 0)"
    else:
        metric = spec.ttft_metric if sli == "ttft" else spec.latency_metric
        threshold = spec.ttft_threshold_s if sli == "ttft" else spec.latency_threshold_s
        total = f"sum by ({by}) (rate({metric}_count[{rng}]))"
        fast = f"sum by ({by}) (rate({metric}_bucket{{{_le_matcher(threshold)}}}[{rng}]))"
        expr = f"(\n  {total}\n  - {fast}\n)\n/\n({total} > 0)"
    if spec.service_label != "service":
        # Alerts and playbooks address the service as `service`, whatever the metrics call it.
        expr = f'label_replace(\n{expr},\n"service", "$1", {_string(spec.service_label)}, "(.*)")'
    return expr


class _Block(str):
    """A string PyYAML writes as a literal block, so multi-line PromQL stays readable."""


def _represent_block(dumper: yaml.SafeDumper, value: _Block) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|" if "\n" in value else None)


class _RulesDumper(yaml.SafeDumper):
    pass


_RulesDumper.add_representer(_Block, _represent_block)


def _alert_rule(spec: SloRulesSpec, sli: str, alert: BurnAlert) -> dict[str, Any]:
    name = ALERT_NAMES[sli]
    long_rule = recording_rule_name(sli, "burn_rate", alert.long_window)
    short_rule = recording_rule_name(sli, "burn_rate", alert.short_window)
    factor = _number(alert.factor)
    objective = spec.objective(sli)
    # $value is the long window's burn (left side of `and`); the short window's comes from a query
    # on the same group, so the message shows both numbers the decision was made on.
    selector = ",".join(f"{label}=%q" for label in spec.group_labels)
    args = " ".join(f"$labels.{label}" for label in spec.group_labels)
    short_value = (f'{{{{ with printf "{short_rule}{{{selector}}}" {args} | query }}}}'
                   f'{{{{ . | first | value | printf "%.1f" }}}}{{{{ else }}}}?{{{{ end }}}}')
    scaled = ""
    if spec.window_scale != 1:
        scaled = (f" Windows scaled by {spec.window_scale:g}: {alert.long_window} is {spec.range(alert.long_window)},"
                  f" {alert.short_window} is {spec.range(alert.short_window)}.")
    what = _SLI_TITLES[sli]
    if sli == "ttft":
        what += f" (slower than {format_duration(spec.ttft_threshold_s)})"
    elif sli == "latency":
        what += f" (slower than {format_duration(spec.latency_threshold_s)})"
    rule: dict[str, Any] = {
        "alert": name,
        "expr": _Block(f"{long_rule} > {factor}\nand\n{short_rule} > {factor}"),
        "for": format_duration(_scaled_ms(alert.for_s, spec.window_scale) / 1000),
        "labels": {"severity": alert.severity, "slo": sli,
                   "long_window": alert.long_window, "short_window": alert.short_window},
        "annotations": {
            "summary": f"{{{{ $labels.service }}}} is burning its {_SLI_TITLES[sli]} budget"
                       f" ({alert.severity}: over {factor}x for {alert.long_window} and {alert.short_window})",
            "description": (
                f"{what} burn rate {{{{ $value | printf \"%.1f\" }}}}x over {alert.long_window}"
                f" and {short_value}x over {alert.short_window} (threshold {factor}x;"
                f" objective {objective * 100:g}% over {SLO_PERIOD}).{scaled}"),
        },
    }
    if spec.runbook_url:
        rule["annotations"]["runbook_url"] = (spec.runbook_url.replace("{slo}", sli).replace("{alertname}", name)
                                              .replace("{severity}", alert.severity))
    return rule


def generate_rules(spec: SloRulesSpec | None = None) -> dict[str, Any]:
    """The rule file as a dict: one group per SLI holding its recording rules, then its alerts.

    One group per SLI because Prometheus evaluates a group's rules in order, so the alerts read
    burn rates recorded in the same evaluation rather than one interval late.
    """
    spec = spec or SloRulesSpec()
    groups = []
    for sli in SLIS:
        rules: list[dict[str, Any]] = []
        for window, _ in WINDOWS:
            rules.append({"record": recording_rule_name(sli, "ratio_rate", window),
                          "expr": _Block(sli_ratio_expr(spec, sli, window))})
        budget = _number(1 - spec.objective(sli))
        for window, _ in WINDOWS:
            rules.append({"record": recording_rule_name(sli, "burn_rate", window),
                          "expr": f"{recording_rule_name(sli, 'ratio_rate', window)} / {budget}"})
        rules.extend(_alert_rule(spec, sli, alert) for alert in BURN_ALERTS)
        group: dict[str, Any] = {"name": f"llm-slo-{sli}"}
        if spec.group_interval_s is not None:
            group["interval"] = format_duration(spec.group_interval_s)
        group["rules"] = rules
        groups.append(group)
    if spec.early_warning:
        groups.append(_early_warning_group(spec))
    return {"groups": groups}


def _early_warning_group(spec: SloRulesSpec) -> dict[str, Any]:
    """The kernel early warning's alert: one per workload and domain the agents report firing."""
    who = ("{{ with $labels.pod }}{{ $labels.namespace }}/{{ . }}{{ else }}{{ $labels.pod_uid }}"
           "{{ $labels.container_id }}{{ $labels.cgroup }}{{ end }}")
    rule: dict[str, Any] = {
        "alert": EARLY_WARNING_ALERT,
        "expr": f"max by ({', '.join(EARLY_WARNING_LABELS)}) ({EARLY_WARNING_METRIC}) > 0",
        "labels": {"severity": "ticket", "early_warning": "kernel"},
        "annotations": {
            "summary": f"{who}: the kernel sees {{{{ $labels.domain }}}} trouble ({{{{ $labels.signal }}}})",
            "description": ("The capture agent's attribution model names {{ $labels.domain }} on this workload's "
                            "flight-recorder history, against the workload's own rolling baseline, for longer than "
                            "its minimum duration; no SLO need be burning yet."),
            BEGAN_AT_ANNOTATION: '{{ $value | printf "%.3f" }}',
        },
    }
    if spec.runbook_url:
        rule["annotations"]["runbook_url"] = (spec.runbook_url.replace("{slo}", "early-warning")
                                              .replace("{alertname}", EARLY_WARNING_ALERT).replace("{severity}", "ticket"))
    group: dict[str, Any] = {"name": "llm-kernel-early-warning"}
    if spec.group_interval_s is not None:
        group["interval"] = format_duration(spec.group_interval_s)
    group["rules"] = [rule]
    return group


def render_rules(spec: SloRulesSpec | None = None, header: Sequence[str] = ()) -> str:
    """The rule file as YAML text, with ``header`` lines as leading comments."""
    spec = spec or SloRulesSpec()
    body = yaml.dump(generate_rules(spec), Dumper=_RulesDumper, sort_keys=False, width=10_000, allow_unicode=True)
    lines = [f"# {line}" if line else "#" for line in header]
    return "\n".join(lines) + ("\n" if lines else "") + body


def describe(spec: SloRulesSpec) -> list[str]:
    """A human summary of the spec, used as the rule file's header comment."""
    return [
        "LLM SLO rules generated by `llmslo rules generate`; edit the options, not this file.",
        f"Objectives over {SLO_PERIOD}: errors {spec.objective_errors * 100:g}% (codes =~ {spec.error_codes}),"
        f" TTFT {spec.objective_ttft * 100:g}% within {format_duration(spec.ttft_threshold_s)},"
        f" latency {spec.objective_latency * 100:g}% within {format_duration(spec.latency_threshold_s)}.",
        "TTFT and latency thresholds must be bucket bounds (le) of the histograms.",
        f"Window scale {spec.window_scale:g}: " + ", ".join(f"{w}={spec.range(w)}" for w, _ in WINDOWS) + ".",
    ]
