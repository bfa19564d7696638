"""The lab's calibration, read by the responder to turn the engine's score into a probability."""
from __future__ import annotations

import json

import pytest

from capture.attribution.verdict import Hypothesis, Verdict
from responder.attribution import calibration
from responder.attribution.calibration import Calibration, Curve, Level


def curve() -> Curve:
    return Curve((Level(0.50, 0.60, 0.40, 10, 4), Level(0.65, 0.80, 0.80, 50, 40), Level(0.85, 0.95, 1.0, 12, 12)))


def cal() -> Calibration:
    return Calibration(verdict=curve(), hypothesis=Curve((Level(0.0, 0.3, 0.05, 200, 10), Level(0.5, 0.9, 0.7, 80, 56))),
                       source="corpus-s1 training part", domains={"network": 30, "dns": 2})


def test_probability_is_flat_within_a_level_linear_between_and_clipped_beyond():
    c = curve()
    assert c.probability(0.55) == 0.40 and c.probability(0.70) == 0.80
    assert c.probability(0.625) == pytest.approx(0.60)  # halfway between 0.60 and 0.65
    assert c.probability(0.10) == 0.40 and c.probability(0.99) == 1.0
    assert c.level(0.70).n == 50 and c.level(0.62).n == 10 and c.level(0.99).n == 12
    assert c.covers(0.5) and not c.covers(0.49) and not c.covers(0.96)


def test_levels_out_of_order_are_refused():
    with pytest.raises(ValueError):
        Curve((Level(0.5, 0.6, 0.9, 3, 3), Level(0.7, 0.8, 0.5, 3, 1)))
    with pytest.raises(ValueError):
        Curve(())


def test_apply_turns_scores_into_probabilities_and_keeps_the_scores():
    v = Verdict(["network"], 0.72, [Hypothesis("network", 0.72), Hypothesis("dns", 0.2)])
    cal().apply(v)
    assert (v.score, v.confidence, v.calibrated) == (0.72, 0.80, True)
    assert v.calibration == "40 of 50 lab verdicts at this level were right"
    assert [(h.score, h.confidence) for h in v.hypotheses] == [(0.72, 0.7), (0.2, 0.05)]
    cal().apply(v)  # once only
    assert v.score == 0.72 and v.confidence == 0.80
    d = Verdict.from_dict(v.to_dict())
    assert d.score == 0.72 and d.hypotheses[1].score == 0.2


def test_a_verdict_outside_what_the_lab_covered_says_so():
    high = cal().apply(Verdict(["network"], 0.99))
    assert high.calibration.endswith("outside what the lab covered: its score 0.99 is outside the lab's 0.50–0.95")
    rare = cal().apply(Verdict(["dns"], 0.7))
    assert rare.calibration.endswith("outside what the lab covered: the lab named dns 2 time(s)")
    abstained = cal().apply(Verdict([], 0.45, abstain_reason="too weak"))
    assert abstained.calibration is None and abstained.score == 0.45


def test_the_file_round_trips_and_broken_ones_give_nothing(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(cal().to_dict()))
    assert calibration.load(path) == cal()
    assert calibration.load(tmp_path / "absent.json") is None
    path.write_text("{not json")
    assert calibration.load(path) is None
    path.write_text(json.dumps({"verdict": {"levels": [{"lo": "x"}]}}))
    assert calibration.load(path) is None
    path.write_text(json.dumps({"verdict": {"levels": [{"lo": 0.5, "hi": 0.6, "probability": 0.9, "n": 1, "right": 1},
                                                       {"lo": 0.7, "hi": 0.8, "probability": 0.1, "n": 1, "right": 0}]}}))
    assert calibration.load(path) is None  # not monotone


def test_the_shipped_calibration_loads_and_says_what_it_was_fitted_on():
    from responder.config import Settings

    shipped = calibration.load(Settings().calibration_file)
    assert shipped is not None, "responder/attribution/calibration.json does not load"
    assert "training part" in shipped.source and shipped.verdict.n >= 8
    v = shipped.apply(Verdict(["network"], 0.7))
    assert v.calibrated and v.calibration and "lab verdict" in v.calibration
