"""Scenario files: the YAML a lab run is made of, loaded and checked before anything starts.

The shape::

    scenarios:
      - name: provider-429-30pct
        baseline_s: 30          # load only
        fault_s: 60             # faults active
        load_rps: 20
        seed: 7                 # optional
        faults:
          - {kind: provider_throttle, fraction: 0.3, retry_after_s: 1}
          # optional per fault: start_s (offset into the fault phase), stop_s
        expect: [provider_throttling]   # ground-truth domains; [] means no fault

Fault kinds and their parameters are ``lab.faults.FAULT_KINDS`` (the one table; checked with
``lab.faults.validate_fault``). ``expect`` must be exactly the set of the faults' ground-truth
domains, so a typo in either is caught here rather than scored as a miss. Every problem is one
line, ``FILE:LINE: scenario 'NAME': FIELD: what is wrong``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capture.attribution.verdict import DOMAINS

SCENARIO_KEYS = ("name", "baseline_s", "fault_s", "load_rps", "seed", "faults", "expect")
REQUIRED_KEYS = ("name", "baseline_s", "fault_s", "load_rps", "faults", "expect")
TIMING_KEYS = ("start_s", "stop_s")  # per fault, handled here; the rest are the fault kind's parameters
# The name becomes DIR/cases/NAME.json: keep it a plain file name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
# Bounds that catch unit mistakes (milliseconds written as seconds) rather than limit real use.
MAX_PHASE_S = 3600.0
MAX_LOAD_RPS = 500.0


class ScenarioError(ValueError):
    """A scenario file that cannot run; the message is one line naming the scenario and field."""


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    params: dict[str, Any]
    domain: str | None  # ground truth, from the fault kind; None for a pseudo-fault with none
    start_s: float = 0.0  # offset into the fault phase
    stop_s: float | None = None  # offset into the fault phase; None: until the phase ends

    def fault_dict(self) -> dict[str, Any]:
        """What ``LabStack.apply`` takes: the kind and its parameters."""
        return {"kind": self.kind, **self.params}

    def to_dict(self) -> dict[str, Any]:
        d = self.fault_dict()
        if self.start_s:
            d["start_s"] = self.start_s
        if self.stop_s is not None:
            d["stop_s"] = self.stop_s
        return d


@dataclass(frozen=True)
class Scenario:
    name: str
    baseline_s: float
    fault_s: float
    load_rps: float
    faults: tuple[FaultSpec, ...]
    expect: tuple[str, ...]
    seed: int | None = None
    line: int | None = field(default=None, compare=False)

    @property
    def onset_s(self) -> float:
        """Offset of the first fault into the fault phase (0 for a no-fault scenario)."""
        return min((f.start_s for f in self.faults), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "baseline_s": self.baseline_s, "fault_s": self.fault_s,
                             "load_rps": self.load_rps}
        if self.seed is not None:
            d["seed"] = self.seed
        d["faults"] = [f.to_dict() for f in self.faults]
        d["expect"] = list(self.expect)
        return d


def _fault_table():
    # Imported when a file is checked, not at import time, so the scorecard and the report
    # commands work on stored cases without the fault machinery.
    from lab.faults import FAULT_KINDS, validate_fault

    return FAULT_KINDS, validate_fault


class _Reader:
    def __init__(self, file: str):
        self.file = file

    def fail(self, node: yaml.Node | None, scenario: str | None, what: str) -> ScenarioError:
        where = f"{self.file}:{node.start_mark.line + 1}" if node is not None else self.file
        who = f" scenario {scenario!r}:" if scenario else ""
        return ScenarioError(f"{where}:{who} {what}")

    def mapping(self, node: yaml.Node, scenario: str | None, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, scenario, f"{what}: expected a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = _construct(k)
            if not isinstance(key, str):
                raise self.fail(k, scenario, f"{what}: keys must be strings, got {key!r}")
            if key in out:
                raise self.fail(k, scenario, f"{what}.{key}: given twice")
            out[key] = (k, v)
        return out

    def number(self, node: yaml.Node, scenario: str, field_: str, lo: float, hi: float,
               lo_open: bool = True) -> float:
        v = _construct(node)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(node, scenario, f"{field_}: expected a number, got {v!r}")
        if (v <= lo if lo_open else v < lo) or v > hi:
            bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise self.fail(node, scenario, f"{field_}: expected a number {bound} and <= {hi:g}, got {v!r}")
        return float(v)


def _construct(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_scenarios(text: str, file: str = "<scenarios>") -> list[Scenario]:
    """Check a scenario file's text; the first problem raises ``ScenarioError`` (one line)."""
    r = _Reader(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ScenarioError(f"{file}{line}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{file}: invalid YAML: {e}") from None
    if root is None:
        raise ScenarioError(f"{file}: empty file; expected a mapping with a 'scenarios' list")
    top = r.mapping(root, None, "top level")
    extra = sorted(set(top) - {"scenarios"})
    if extra:
        raise r.fail(top[extra[0]][0], None, f"{extra[0]}: unknown key; a scenario file holds only 'scenarios'")
    if "scenarios" not in top:
        raise r.fail(root, None, "scenarios: missing; expected a list of scenarios")
    seq = top["scenarios"][1]
    if not isinstance(seq, yaml.SequenceNode) or not seq.value:
        raise r.fail(seq, None, "scenarios: expected a non-empty list")
    fault_kinds, validate_fault = _fault_table()
    out: list[Scenario] = []
    seen: dict[str, int] = {}
    for i, node in enumerate(seq.value):
        out.append(_scenario(r, node, i, fault_kinds, validate_fault))
        name = out[-1].name
        if name in seen:
            raise r.fail(node, name, f"name: already used by the scenario at line {seen[name]}")
        seen[name] = node.start_mark.line + 1
    return out


def _scenario(r: _Reader, node: yaml.Node, index: int, fault_kinds: dict, validate_fault) -> Scenario:
    label = f"scenarios[{index}]"
    keys = r.mapping(node, None, label)
    name_node = keys.get("name", (None, None))[1]
    name = _construct(name_node) if name_node is not None else None
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise r.fail(name_node or node, None,
                     f"{label}.name: expected a name of letters, digits, '.', '_' or '-' (it names the case file), "
                     f"got {name!r}")
    for key, (k, _) in keys.items():
        if key not in SCENARIO_KEYS:
            raise r.fail(k, name, f"{key}: unknown field; expected {', '.join(SCENARIO_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in keys:
            raise r.fail(node, name, f"{key}: missing")
    baseline_s = r.number(keys["baseline_s"][1], name, "baseline_s", 0, MAX_PHASE_S)
    fault_s = r.number(keys["fault_s"][1], name, "fault_s", 0, MAX_PHASE_S)
    load_rps = r.number(keys["load_rps"][1], name, "load_rps", 0, MAX_LOAD_RPS)
    seed = None
    if "seed" in keys:
        seed = _construct(keys["seed"][1])
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise r.fail(keys["seed"][1], name, f"seed: expected a non-negative integer, got {seed!r}")

    fnode = keys["faults"][1]
    if not isinstance(fnode, yaml.SequenceNode):
        raise r.fail(fnode, name, "faults: expected a list (empty for a no-fault scenario)")
    faults = tuple(_fault(r, f, name, j, fault_s, fault_kinds, validate_fault) for j, f in enumerate(fnode.value))

    enode = keys["expect"][1]
    expect = _construct(enode)
    if not isinstance(expect, list) or not all(isinstance(d, str) for d in expect):
        raise r.fail(enode, name, f"expect: expected a list of fault domains ([] for no fault), got {expect!r}")
    for d in expect:
        if d not in DOMAINS:
            raise r.fail(enode, name, f"expect: unknown domain {d!r}; known: {', '.join(DOMAINS)}")
    if len(set(expect)) != len(expect):
        raise r.fail(enode, name, "expect: a domain is listed twice")
    injected = {f.domain for f in faults if f.domain}
    if set(expect) != injected:
        missing, extra = sorted(injected - set(expect)), sorted(set(expect) - injected)
        what = []
        if missing:
            what.append(f"the faults inject {', '.join(missing)} but expect does not list it")
        if extra:
            what.append(f"expect lists {', '.join(extra)} but no fault injects it")
        raise r.fail(enode, name, "expect: " + "; ".join(what))
    return Scenario(name=name, baseline_s=baseline_s, fault_s=fault_s, load_rps=load_rps, faults=faults,
                    expect=tuple(expect), seed=seed, line=node.start_mark.line + 1)


def _fault(r: _Reader, node: yaml.Node, scenario: str, j: int, fault_s: float, fault_kinds: dict,
           validate_fault) -> FaultSpec:
    label = f"faults[{j}]"
    keys = r.mapping(node, scenario, label)
    if "kind" not in keys:
        raise r.fail(node, scenario, f"{label}.kind: missing; known kinds: {', '.join(sorted(fault_kinds))}")
    kind = _construct(keys["kind"][1])
    if not isinstance(kind, str) or kind not in fault_kinds:
        raise r.fail(keys["kind"][1], scenario,
                     f"{label}.kind: unknown fault kind {kind!r}; known: {', '.join(sorted(fault_kinds))}")
    start_s, stop_s = 0.0, None
    if "start_s" in keys:
        start_s = r.number(keys["start_s"][1], scenario, f"{label}.start_s", 0, fault_s, lo_open=False)
        if start_s >= fault_s:
            raise r.fail(keys["start_s"][1], scenario,
                         f"{label}.start_s: must be before the end of the fault phase ({fault_s:g} s)")
    if "stop_s" in keys:
        stop_s = r.number(keys["stop_s"][1], scenario, f"{label}.stop_s", start_s, fault_s)
    given = {k: _construct(v) for k, (_, v) in keys.items()}
    problem = validate_fault(given)
    if problem:
        # Point at the line of the parameter the message names, when it names one first.
        first = re.match(r"\w+", problem)
        at = keys[first.group()][1] if first and first.group() in keys else node
        raise r.fail(at, scenario, f"{label} ({kind}): {problem}")
    params = {k: v for k, v in given.items() if k != "kind" and k not in TIMING_KEYS}
    return FaultSpec(kind=kind, params=params, domain=fault_kinds[kind].domain or None, start_s=start_s,
                     stop_s=stop_s)


def load_scenarios(path: Path | str, only: list[str] | None = None) -> list[Scenario]:
    """The scenarios of a file, checked; ``only`` keeps those names (each must exist)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror or e}") from None
    scenarios = parse_scenarios(text, str(path))
    if only:
        names = {s.name for s in scenarios}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ScenarioError(f"{path}: --only {unknown[0]}: no such scenario; known: "
                                f"{', '.join(s.name for s in scenarios)}")
        scenarios = [s for s in scenarios if s.name in set(only)]
    return scenarios


# --- how long a suite takes --------------------------------------------------------------------
# Typical figures for the estimate (the runner's bounds are larger; see lab.runner):
# PostgreSQL initdb, Prometheus, Alertmanager, the responder and its preloaded probes: 7 s
# measured on an idle 2-CPU machine; rounded up for a loaded one.
STACK_START_S = 20.0
VERDICT_TAIL_S = 15.0  # an ad hoc capture (or a late alert's) runs past the fault phase by about this much
RECOVERY_S = 40.0  # faults cleared -> alerts resolved and the incident closed, at the lab's window scale


def estimate_s(scenarios: list[Scenario]) -> float:
    """A typical wall-clock time for running ``scenarios`` on one stack."""
    return STACK_START_S + sum(s.baseline_s + s.fault_s + VERDICT_TAIL_S + RECOVERY_S for s in scenarios)
