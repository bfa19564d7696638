"""Scenario files: the shipped suites have the shape the issue asks for, and every mistake is
refused with one line naming the file's line, the scenario and the field."""
from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

from capture.attribution.verdict import DOMAINS
from lab.faults import ANOMALY_KINDS, FAULT_KINDS, make_fault
from lab.scenarios import ScenarioError, estimate_s, load_scenarios, parse_scenarios

REPO = Path(__file__).resolve().parents[2]
STANDARD = REPO / "lab" / "scenarios" / "standard.yaml"
CI = REPO / "lab" / "scenarios" / "ci.yaml"


def test_standard_suite_covers_every_domain_by_two_mechanisms_or_strengths():
    suite = load_scenarios(STANDARD)
    assert len({s.name for s in suite}) == len(suite)
    single = [s for s in suite if len(s.expect) == 1]
    variants: dict[str, set] = defaultdict(set)
    for s in single:
        variants[s.expect[0]].add(tuple(sorted((f.kind, tuple(sorted(f.params.items()))) for f in s.faults)))
    assert set(variants) == set(DOMAINS)
    assert all(len(v) >= 2 for v in variants.values()), {d: len(v) for d, v in variants.items()}
    multi = [s for s in suite if len(s.expect) >= 2]
    assert len(multi) >= 3 and all(len({f.domain for f in s.faults}) >= 2 for s in multi)
    assert any(f.start_s > 0 for s in multi for f in s.faults), "one multi-fault scenario is staggered"
    none = [s for s in suite if not s.expect]
    assert len(none) >= 2 and all(f.domain is None for s in none for f in s.faults)
    assert any(not s.faults for s in none), "load noise only"
    assert any(f.kind == "service_restart" for s in none for f in s.faults), "a restart of the service"
    assert len([s for s in suite if s.name.endswith("-edge")]) >= 3
    # every fault kind of the lab's table is exercised somewhere
    assert {f.kind for s in suite for f in s.faults} == set(FAULT_KINDS) - ANOMALY_KINDS
    # the runner can build every fault object from the specs
    for s in suite:
        for f in s.faults:
            fault = make_fault(f.fault_dict())
            assert (fault.kind, fault.domain) == (f.kind, f.domain)
    assert 60 * 60 < estimate_s(suite) < 120 * 60


def test_ci_suite_is_one_short_scenario_per_domain():
    suite = load_scenarios(CI)
    assert sorted(d for s in suite for d in s.expect) == sorted(DOMAINS)
    assert all(len(s.expect) == 1 and s.baseline_s <= 30 and s.fault_s <= 60 for s in suite)
    assert estimate_s(suite) < 20 * 60


def test_scenario_fields_and_fault_timing_are_read():
    (s,) = parse_scenarios(textwrap.dedent("""\
        scenarios:
          - name: staggered
            baseline_s: 30
            fault_s: 60
            load_rps: 12.5
            seed: 7
            faults:
              - {kind: provider_throttle, fraction: 0.3}
              - {kind: cpu_throttle, cpus: 0.2, start_s: 20, stop_s: 50}
            expect: [app_cpu, provider_throttling]
        """))
    assert (s.name, s.baseline_s, s.fault_s, s.load_rps, s.seed, s.line) == ("staggered", 30, 60, 12.5, 7, 2)
    assert s.expect == ("app_cpu", "provider_throttling") and s.onset_s == 0
    throttle, quota = s.faults
    assert throttle.fault_dict() == {"kind": "provider_throttle", "fraction": 0.3}
    assert (throttle.domain, throttle.start_s, throttle.stop_s) == ("provider_throttling", 0.0, None)
    assert (quota.params, quota.start_s, quota.stop_s) == ({"cpus": 0.2}, 20.0, 50.0)
    assert quota.to_dict() == {"kind": "cpu_throttle", "cpus": 0.2, "start_s": 20.0, "stop_s": 50.0}


GOOD = """\
scenarios:
  - name: first
    baseline_s: 30
    fault_s: 60
    load_rps: 20
    faults:
      - {kind: provider_throttle, fraction: 0.3, retry_after_s: 1}
    expect: [provider_throttling]
  - name: loss
    baseline_s: 30
    fault_s: 60
    load_rps: 20
    faults:
      - {kind: packet_loss, target: provider, percent: 20}
    expect: [network]
"""


def broken(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize("text, message", [
    (broken("kind: packet_loss", "kind: packet_los"),
     "f.yaml:14: scenario 'loss': faults[0].kind: unknown fault kind 'packet_los'; known: "),
    (broken("percent: 20", "percent: 20, burst: 3"),
     "f.yaml:14: scenario 'loss': faults[0] (packet_loss): burst: unknown parameter of packet_loss"),
    (broken("fraction: 0.3", "fraction: 1.5"),
     "f.yaml:7: scenario 'first': faults[0] (provider_throttle): fraction: expected a value in 0..1, got 1.5"),
    (broken("target: provider", "target: database"),
     "f.yaml:14: scenario 'loss': faults[0] (packet_loss): target: expected one of provider, retrieval"),
    (broken("{kind: packet_loss, target: provider, percent: 20}", "{kind: packet_loss, percent: 20}"),
     "f.yaml:14: scenario 'loss': faults[0] (packet_loss): target: required by packet_loss"),
    (broken("    fault_s: 60\n    load_rps: 20\n    faults:\n      - {kind: packet",
            "    load_rps: 20\n    faults:\n      - {kind: packet"),
     "f.yaml:9: scenario 'loss': fault_s: missing"),
    (broken("    load_rps: 20\n    faults:\n      - {kind: packet",
            "    load_rps: 20\n    rps: 3\n    faults:\n      - {kind: packet"),
     "f.yaml:13: scenario 'loss': rps: unknown field; expected name, baseline_s"),
    (broken("baseline_s: 30", "baseline_s: thirty"),
     "f.yaml:3: scenario 'first': baseline_s: expected a number, got 'thirty'"),
    (broken("load_rps: 20", "load_rps: 0"), "f.yaml:5: scenario 'first': load_rps: expected a number > 0"),
    (broken("expect: [network]", "expect: [networking]"),
     "f.yaml:15: scenario 'loss': expect: unknown domain 'networking'"),
    (broken("expect: [network]", "expect: [dns]"),
     "f.yaml:15: scenario 'loss': expect: the faults inject network but expect does not list it; "
     "expect lists dns but no fault injects it"),
    (broken("expect: [network]", "expect: []"),
     "f.yaml:15: scenario 'loss': expect: the faults inject network but expect does not list it"),
    (broken("percent: 20}", "percent: 20, start_s: 60}"),
     "f.yaml:14: scenario 'loss': faults[0].start_s: must be before the end of the fault phase (60 s)"),
    (broken("percent: 20}", "percent: 20, start_s: 10, stop_s: 90}"),
     "f.yaml:14: scenario 'loss': faults[0].stop_s: expected a number > 10 and <= 60, got 90"),
    (broken("name: loss", "name: first"), "f.yaml:9: scenario 'first': name: already used by the scenario at line 2"),
    (broken("name: loss", "name: ../loss"), "f.yaml:9: scenarios[1].name: expected a name of letters, digits"),
    (broken("    load_rps: 20\n    faults:\n      - {kind: provider",
            "    load_rps: 20\n    seed: -1\n    faults:\n      - {kind: provider"),
     "f.yaml:6: scenario 'first': seed: expected a non-negative integer, got -1"),
    ("scenarios: []\n", "f.yaml:1: scenarios: expected a non-empty list"),
    ("scenario:\n  - name: x\n", "f.yaml:1: scenario: unknown key; a scenario file holds only 'scenarios'"),
    ("scenarios:\n  - name: x\n    fault_s: [1\n", "f.yaml:4: invalid YAML"),
    ("", "f.yaml: empty file"),
])
def test_mistakes_are_one_line_naming_scenario_and_field(text, message):
    with pytest.raises(ScenarioError) as e:
        parse_scenarios(text, "f.yaml")
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_only_keeps_named_scenarios_and_refuses_unknown_names(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(GOOD)
    assert [s.name for s in load_scenarios(f, only=["loss"])] == ["loss"]
    with pytest.raises(ScenarioError, match=r"--only lost: no such scenario; known: first, loss"):
        load_scenarios(f, only=["lost"])
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenarios(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "lab" / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_file_loads(path):
    assert load_scenarios(path)


def test_the_anomaly_file_injects_each_anomaly_kind_beside_controls_with_nothing_new():
    suite = load_scenarios(REPO / "lab" / "scenarios" / "anomalies.yaml")
    kinds = {f.kind for s in suite for f in s.faults}
    assert ANOMALY_KINDS <= kinds
    assert any(not s.faults for s in suite) and {"service_restart", "cpu_contention"} <= kinds
