"""The lab's reliability table, read by the responder to say what a confidence has meant."""
from __future__ import annotations

import json

from responder.attribution import calibration


def table(tmp_path, **extra):
    bins = [{"lo": b / 10, "hi": (b + 1) / 10, "n": 0, "mean_confidence": None, "precision": None} for b in range(10)]
    bins[8].update(n=14, precision=13 / 14)
    bins[9].update(n=3, precision=1.0)
    path = tmp_path / "scorecard.json"
    path.write_text(json.dumps({"mode": "combined", "calibration": {"bins": bins, "ece": 0.04, "n": 17}, **extra}))
    return path


def test_precision_at_a_confidence_from_a_scorecard(tmp_path):
    cal = calibration.load(table(tmp_path))
    assert cal.precision_at(0.85) == (13 / 14, 14)
    assert cal.precision_at(1.0) == (1.0, 3)  # the top bin holds 1.0 itself
    assert cal.precision_at(0.55) is None  # no case in that bin: say nothing
    assert cal.describe(0.82) == ("in the lab (combined mode, 17 verdicts), verdicts at this confidence were "
                                  "right 93% of the time (14 cases)")


def test_missing_or_broken_tables_give_nothing(tmp_path):
    assert calibration.load(tmp_path / "absent.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert calibration.load(bad) is None
    bad.write_text(json.dumps({"calibration": {"bins": [{"lo": "x"}]}}))
    assert calibration.load(bad) is None
