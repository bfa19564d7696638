"""The lab runs kept in results/lab/ re-score, with today's engine, to exactly the verdicts their
stored scorecards hold: a change meant to keep behaviour (a refactor of attribution, a move of
the evidence types) must keep every verdict and confidence of every case in every mode."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from lab import scorecard as S

REPO = Path(__file__).resolve().parents[2]
RUNS = sorted(p.parent for p in (REPO / "results" / "lab").glob(f"*/{S.PACKED}"))


def test_there_are_stored_runs():
    assert {r.name for r in RUNS} >= {"standard", "ci"}


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_rescoring_gives_the_stored_verdicts(run):
    cases = S.load_cases(run)
    modes = S.stored_modes(run)
    assert modes, f"{run}: no stored scorecards"
    for mode in modes:
        stored = json.loads((S.mode_dir(run, mode, modes) / "scorecard.json").read_text())["cases"]
        now = S.score(cases, mode)["cases"]
        keys = ("name", "predicted", "confidence", "abstain_reason", "correct")
        changed = [(mode, a["name"], {k: (a[k], b[k]) for k in keys if a[k] != b[k]})
                   for a, b in zip(stored, now, strict=True) if any(a[k] != b[k] for k in keys)]
        assert not changed, changed


def test_pack_round_trips_and_report_reads_the_packed_run(tmp_path):
    run = tmp_path / "run"
    (run / "cases").mkdir(parents=True)
    with gzip.open(REPO / "results" / "lab" / "ci" / S.PACKED, "rt") as f:
        originals = [json.loads(line) for line in f]
    for case in originals:
        (run / "cases" / f"{case['name']}.json").write_text(json.dumps(case))
    before = S.score(S.load_cases(run), "combined")
    S.pack_cases(run)
    assert not (run / "cases").exists() and (run / S.PACKED).is_file()
    assert S.load_cases(run) == sorted(originals, key=lambda c: (c.get("finished_at") or 0, c["name"]))
    assert S.score(S.load_cases(run), "combined")["cases"] == before["cases"]
    with pytest.raises(S.ScorecardError, match="no cases/ directory to pack"):
        S.pack_cases(run)


def test_a_broken_pack_is_named(tmp_path):
    (tmp_path / S.PACKED).write_bytes(b"not gzip")
    with pytest.raises(S.ScorecardError, match="cannot read the cases"):
        S.load_cases(tmp_path)
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    with pytest.raises(S.ScorecardError, match="not a lab run"):
        S.load_cases(tmp_path)


def test_a_run_packed_while_it_goes_on_keeps_every_case_once(tmp_path):
    run = tmp_path / "run"
    (run / "cases").mkdir(parents=True)
    with gzip.open(REPO / "results" / "lab" / "ci" / S.PACKED, "rt") as f:
        originals = [json.loads(line) for line in f]
    first, later = originals[:3], originals[3:]
    for case in first:
        (run / "cases" / f"{case['name']}.json").write_text(json.dumps(case))
    S.pack_cases(run)
    assert S.case_names(run) == {c["name"] for c in first}
    # the run goes on (or is resumed): new cases beside the pack, one of them a re-run
    rerun = dict(first[0], invalid="baseline not healthy: test")
    (run / "cases").mkdir()  # the runner makes it again (lab.runner.write_case)
    for case in later + [rerun]:
        (run / "cases" / f"{case['name']}.json").write_text(json.dumps(case))
    names = [c["name"] for c in S.load_cases(run)]
    assert sorted(names) == sorted(c["name"] for c in originals) and len(names) == len(set(names))
    assert next(c for c in S.load_cases(run) if c["name"] == first[0]["name"])["invalid"]  # cases/ wins
    assert first[0]["name"] not in S.case_names(run, valid_only=True)  # --resume runs it again
    S.pack_cases(run)
    assert not (run / "cases").exists() and len(S.load_cases(run)) == len(originals)
