"""``llmslo lab``: mistakes refused in one line before anything starts, and ``report`` /
``compare`` on stored case files (no lab stack is started by these tests)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab import cli, scorecard
from tests.lab.test_scorecard import stored_incident
from tests.responder.test_cli import REPO, run

VALID = """\
scenarios:
  - name: loss
    baseline_s: 30
    fault_s: 60
    load_rps: 20
    faults:
      - {kind: packet_loss, target: provider, percent: 20}
    expect: [network]
"""


def llmslo(*args: str) -> subprocess.CompletedProcess:
    """The real command line, through responder/cli.py's hand-off to lab/cli.py."""
    return run(*args, timeout=120)


@pytest.mark.parametrize("change, message", [
    (("percent: 20", "percent: 20, burst: 2"),
     "scenario 'loss': faults[0] (packet_loss): burst: unknown parameter of packet_loss"),
    (("kind: packet_loss", "kind: packet_drop"), "scenario 'loss': faults[0].kind: unknown fault kind 'packet_drop'"),
    (("percent: 20", "percent: 250"),
     "scenario 'loss': faults[0] (packet_loss): percent: expected a value in 0.01..100"),
    (("expect: [network]", "expect: [dns]"), "scenario 'loss': expect: the faults inject network"),
])
@pytest.mark.slow
def test_run_refuses_a_bad_scenario_file_in_one_line_before_starting(tmp_path, change, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace(*change))
    out = tmp_path / "run"
    r = llmslo("lab", "run", "--scenarios", str(bad), "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"llmslo lab: {bad}:"), r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()  # nothing started, nothing written


def test_run_refuses_other_mistakes_before_starting(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    out = tmp_path / "run"
    assert cli.main(["run", "--scenarios", str(good), "--out", str(out), "--mode", "kernel"]) == 2
    assert "--mode: invalid choice: 'kernel'" in capsys.readouterr().err
    assert cli.main(["run", "--scenarios", str(good), "--out", str(out), "--only", "lost"]) == 2
    assert "--only lost: no such scenario; known: loss" in capsys.readouterr().err
    assert cli.main(["run", "--scenarios", str(tmp_path / "nope.yaml"), "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli.main(["run", "--out", str(out)]) == 2
    assert "the following arguments are required: --scenarios" in capsys.readouterr().err
    # A run directory with cases is not overwritten: --resume runs only what it lacks.
    (out / "cases").mkdir(parents=True)
    (out / "cases" / "loss.json").write_text("{}")
    assert cli.main(["run", "--scenarios", str(good), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds 1 case(s)" in err and err.count("\n") == 1
    assert not (out / "stack").exists()


def write_cases(run_dir: Path) -> list[dict]:
    """Three cases on the same stored evidence (the kernel saw loss, the traces a slow guardrail)."""
    inc = stored_incident()
    cases = [
        {"name": "loss", "expect": ["network"], "detected": True, "detection_s": 40.0, "incident": inc,
         "trigger": "alert", "finished_at": 1.0},
        {"name": "guardrail", "expect": ["policy_layer"], "detected": False, "detection_s": None, "incident": inc,
         "trigger": "adhoc", "finished_at": 2.0},
        {"name": "both", "expect": ["network", "policy_layer"], "detected": True, "detection_s": 60.0,
         "incident": inc, "trigger": "alert", "finished_at": 3.0},
    ]
    (run_dir / "cases").mkdir(parents=True)
    for c in cases:
        (run_dir / "cases" / f"{c['name']}.json").write_text(json.dumps(c))
    return cases


def row_of(table: str, *cells: str) -> str:
    rows = [line for line in table.splitlines() if all(f" {c} " in line for c in cells)]
    assert len(rows) == 1, (cells, table)
    return rows[0]


@pytest.mark.slow
def test_report_scores_stored_cases_in_every_mode(tmp_path):
    run = tmp_path / "run"
    cases = write_cases(run)
    r = llmslo("lab", "report", str(run))
    assert r.returncode == 0, r.stderr
    for name in scorecard.SCORECARD_FILES:
        assert (run / name).is_file()
    card = json.loads((run / "scorecard.json").read_text())
    assert card["mode"] == "combined" and [c["name"] for c in card["cases"]] == ["loss", "guardrail", "both"]
    assert row_of(r.stdout, "combined", "3")

    r = llmslo("lab", "report", str(run), "--mode", "kernel-only", "--mode", "traces-only")
    assert r.returncode == 0, r.stderr
    kernel = json.loads((run / "kernel-only" / "scorecard.json").read_text())
    traces = json.loads((run / "traces-only" / "scorecard.json").read_text())
    # the kernel saw loss only, the traces the guardrail only: each mode gets its own case right
    assert [c["predicted"] for c in kernel["cases"]] == [["network"]] * 3
    assert [c["predicted"] for c in traces["cases"]] == [["policy_layer"]] * 3
    assert [c["correct"] for c in kernel["cases"]] == [True, False, True]
    assert (run / "kernel-only" / "reliability.png").is_file() and (run / "compare.md").is_file()
    for mode, c in (("kernel-only", kernel), ("traces-only", traces)):
        f1 = c["scopes"]["all"]["macro"]["f1_with_abstain"]
        assert f" {f1:.2f} " in row_of(r.stdout, mode)
    assert scorecard.score(cases, "kernel-only")["scopes"] == kernel["scopes"]

    # With no --mode, report regenerates the modes the run already has.
    for p in (run / "kernel-only").iterdir():
        if p.name != "scorecard.json":
            p.unlink()
    assert cli.main(["report", str(run)]) == 0
    assert scorecard.stored_modes(run) == ["combined", "traces-only", "kernel-only"]
    assert (run / "kernel-only" / "scorecard.md").read_text().startswith("# Attribution lab scorecard: kernel-only")


@pytest.mark.slow
def test_compare_puts_runs_and_modes_side_by_side(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_cases(a)
    write_cases(b)
    assert cli.main(["report", str(a), "--mode", "combined", "--mode", "traces-only"]) == 0
    assert cli.main(["report", str(b), "--mode", "kernel-only"]) == 0
    capsys.readouterr()
    out_file = tmp_path / "ablation.md"
    assert cli.main(["compare", str(a), str(b / "scorecard.json"), "-o", str(out_file)]) == 0
    table = capsys.readouterr().out
    assert table == out_file.read_text()
    header = table.splitlines()[0]
    for column in ("macro P", "macro R", "macro F1", "abstain", "ECE", "p95 s"):
        assert column in header
    assert row_of(table, str(a / "combined"), "combined") and row_of(table, str(a / "traces-only"), "traces-only")
    kernel_row = row_of(table, str(b), "kernel-only")
    det = json.loads((b / "scorecard.json").read_text())["detection"]
    assert det["rate"] == pytest.approx(2 / 3) and f" {det['p95_s']:.0f} " in kernel_row  # 40 s and 60 s: p95 59


def test_report_pools_the_parts_of_a_corpus_into_one_scorecard(tmp_path, capsys):
    a, b, pooled = tmp_path / "s1", tmp_path / "s2", tmp_path / "corpus"
    write_cases(a)
    write_cases(b)
    for c in (b / "cases").glob("*.json"):  # another part: other scenario names
        c.rename(c.with_name(f"s2-{c.name}"))
        case = json.loads(c.with_name(f"s2-{c.name}").read_text())
        case["name"] = f"s2-{case['name']}"
        c.with_name(f"s2-{c.name}").write_text(json.dumps(case))
    assert cli.main(["report", str(a), str(b)]) == 2  # several parts need --out
    assert "--out DIR" in capsys.readouterr().err and not pooled.exists()
    assert cli.main(["report", str(a), str(b), "--out", str(pooled), "--mode", "combined"]) == 0
    card = json.loads((pooled / "scorecard.json").read_text())
    assert len(card["cases"]) == 6 and card["runs"] == [str(a), str(b)]
    assert not (a / "scorecard.json").exists()  # the parts are read, not written
    # one scenario in two parts: refused, nothing written
    assert cli.main(["report", str(a), str(a), "--out", str(tmp_path / "twice")]) == 2
    assert "'loss' is in both" in capsys.readouterr().err and not (tmp_path / "twice").exists()


def test_report_and_compare_refuse_what_is_not_a_run(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err == f"llmslo lab: report: {empty}: no cases/ directory or cases.jsonl.gz (not a lab run?)\n"
    assert cli.main(["compare", str(empty)]) == 2
    assert "no scorecard.json here" in capsys.readouterr().err
    (empty / "cases").mkdir()
    (empty / "cases" / "x.json").write_text("[1, 2]")
    assert cli.main(["report", str(empty)]) == 2
    assert "x.json: not a lab case" in capsys.readouterr().err


def test_lab_help_goes_through_llmslo():
    r = llmslo("lab", "--help")
    assert r.returncode == 0 and "{run,report,compare,calibrate,pack,generate}" in r.stdout
    r = llmslo("-v", "lab", "compare")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "required: DIR" in r.stderr


# --- how `lab run` tells which incident is a case's (pure functions of the runner) ---------------------

def alert(status: str, starts: str, severity: str = "page") -> dict:
    return {"status": status, "startsAt": starts, "labels": {"alertname": "LLMTTFTBurn", "severity": severity}}


def test_the_case_incident_is_the_first_with_an_alert_that_started_after_the_onset():
    from common.timefmt import parse_timestamp
    from lab.runner import attributed_since, first_incident, opened_after

    onset = parse_timestamp("2026-01-01T10:00:00Z").timestamp()
    fresh = {"id": "new", "source": "alert", "created_at": onset + 30,
             "alerts": [alert("firing", "2026-01-01T10:00:20.123456789Z")]}
    # an open incident a new page alert joined: older than the onset, its ticket alert older still
    joined = {"id": "joined", "source": "alert", "created_at": onset - 300,
              "alerts": [alert("firing", "2025-12-31T09:00:00Z", "ticket"), alert("firing", "2026-01-01T10:00:40Z")],
              "verdict": {"domains": ["dns"]}, "attributed_at": onset - 200}
    # opened after the onset by an alert that went pending before it: what came before, not this fault
    stale = {"id": "stale", "source": "alert", "created_at": onset + 5,
             "alerts": [alert("firing", "2026-01-01T09:59:00Z", "ticket")]}
    adhoc = {"id": "adhoc", "source": "adhoc", "created_at": onset + 1,
             "alerts": [alert("firing", "2026-01-01T10:00:01Z")]}
    assert [opened_after(i, onset) for i in (fresh, joined, stale, adhoc)] == [True, True, False, False]
    assert first_incident([fresh, stale, adhoc], onset)["id"] == "new"
    assert first_incident([fresh, joined], onset)["id"] == "joined"  # the earlier incident
    assert first_incident([stale, adhoc], onset) is None
    # the joined incident still holds the verdict of the earlier alert: not this case's
    assert not attributed_since(joined, onset)
    assert attributed_since({**joined, "attributed_at": onset + 55}, onset)


def test_progress_names_scenario_phase_and_time_left():
    import io

    from lab.runner import Progress
    from lab.scenarios import load_scenarios

    suite = load_scenarios(REPO / "lab" / "scenarios" / "ci.yaml")
    out = io.StringIO()  # not a terminal: one line per phase
    p = Progress(suite, out)
    p.set(0, "baseline", 20)
    p.set(0, "verdict", 120)
    p.set(7, "recovery", 180)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("lab 1/9 ci-provider-429: baseline, 20 s left; suite about ")
    assert lines[1].startswith("lab 1/9 ci-provider-429: verdict, 0 s (at most 120 s); suite about ")
    assert lines[2].startswith("lab 8/9 ci-policy-block: recovery, 0 s (at most 180 s); suite about 3 min left")


def test_calibrate_fits_on_the_training_part_what_the_responder_reads(tmp_path, capsys):
    from responder.attribution import calibration

    run, out = tmp_path / "run", tmp_path / "calibration.json"
    write_cases(run)
    inc = stored_incident()  # combined mode names network and policy_layer on it
    for seed in range(40):  # right (both injected) for most seeds, wrong for some
        expect = ["network", "policy_layer"] if seed % 4 else ["dns"]
        (run / "cases" / f"s{seed}.json").write_text(json.dumps(
            {"name": f"s{seed}", "seed": seed, "expect": expect, "incident": inc, "finished_at": 10.0 + seed}))
    assert cli.main(["calibrate", str(run), "-o", str(out)]) == 0
    card = scorecard.score(scorecard.load_cases(run), "combined")
    loaded = calibration.load(out)
    assert loaded is not None and loaded.to_dict() == card["calibrated"]["fitted"]
    assert "training part" in loaded.source
    training = [r for r in card["cases"] if r["part"] == "training" and r["predicted"]]
    assert loaded.verdict.n == len(training) >= 8
    right = sum(1 for r in training if r["correct"])
    assert loaded.verdict.probability(training[0]["score"]) == pytest.approx(right / len(training), abs=1e-4)
    # not a run, or too little to fit: exit 2, one line, nothing written
    small = tmp_path / "small"
    write_cases(small)
    for d in (tmp_path / "nowhere", small):
        capsys.readouterr()
        assert cli.main(["calibrate", str(d), "-o", str(tmp_path / "x.json")]) == 2
        assert capsys.readouterr().err.startswith(f"llmslo lab: calibrate: {d}")
        assert not (tmp_path / "x.json").exists()
