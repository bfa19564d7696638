"""From the engine's score to a probability: what a verdict at that score has meant in the lab.

The engine ranks domains by a *score* (``strength / (strength + STRENGTH_HALF)``): it orders
hypotheses and drives the decision rules, but 0.67 does not mean "right two times in three". The
lab measures what it means. ``llmslo lab calibrate`` fits an isotonic regression (scikit-learn,
in the lab only) of "was it right" on the score, over the training part of the lab's corpus, and
writes the fitted step function here as plain numbers. The responder reads that file
(``LLMSLO_CALIBRATION_FILE``) and needs no fitting library:

- ``verdict``: P(every domain the verdict names was injected | the verdict's score), fitted on
  answered verdicts;
- ``hypothesis``: P(this domain was injected | the hypothesis' score), fitted on every hypothesis
  the engine weighed (the "less likely" numbers of a reply).

Each map is a non-decreasing sequence of *levels*: a range of scores, the probability there, and
its support (how many lab verdicts fell in it and how many of those were right), so a reply can
say "82% confidence (41 of 50 lab verdicts at this level were right)". Between two levels the probability is
interpolated linearly, as scikit-learn's ``IsotonicRegression.predict`` does. A score outside the
scores the lab produced, or a verdict naming a domain the lab rarely named, is *outside what the
lab covered*, and the reply says so.

``apply`` turns a verdict's scores into probabilities in place: ``confidence`` becomes the
calibrated probability and ``score`` keeps the engine's number. Without a calibration the
verdict keeps its score as ``confidence`` and ``score`` stays None (the renderers then call it a
score, not a confidence).
"""
from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.attribution.verdict import Verdict

log = logging.getLogger(__name__)

# A domain the lab named fewer times than this is outside what it covered.
MIN_DOMAIN_SUPPORT = 5


@dataclass(frozen=True)
class Level:
    """Scores in [lo, hi] (the lab's verdicts there) and the share of them that were right."""

    lo: float
    hi: float
    probability: float
    n: int
    right: int

    def to_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "probability": self.probability, "n": self.n, "right": self.right}


@dataclass(frozen=True)
class Curve:
    """A fitted non-decreasing map from score to probability, as its levels."""

    levels: tuple[Level, ...]

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("a calibration curve needs at least one level")
        for a, b in zip(self.levels, self.levels[1:]):
            if not (a.hi <= b.lo and a.probability <= b.probability):
                raise ValueError("calibration levels must be in order of score, with non-decreasing probability")

    @property
    def lo(self) -> float:
        return self.levels[0].lo

    @property
    def hi(self) -> float:
        return self.levels[-1].hi

    @property
    def n(self) -> int:
        return sum(lv.n for lv in self.levels)

    def covers(self, score: float) -> bool:
        return self.lo <= score <= self.hi

    def probability(self, score: float) -> float:
        """Constant within a level, linear between two, clipped beyond the ends."""
        xs = [x for lv in self.levels for x in (lv.lo, lv.hi)]
        ys = [lv.probability for lv in self.levels for _ in (0, 1)]
        if score <= xs[0]:
            return ys[0]
        if score >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, score)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (score - x0) / (x1 - x0)

    def level(self, score: float) -> Level:
        """The level holding ``score``, else the nearest one."""
        return min(self.levels, key=lambda lv: 0.0 if lv.lo <= score <= lv.hi else min(abs(score - lv.lo),
                                                                                     abs(score - lv.hi)))

    def to_dict(self) -> dict[str, Any]:
        return {"levels": [lv.to_dict() for lv in self.levels]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Curve:
        return cls(tuple(Level(lo=float(lv["lo"]), hi=float(lv["hi"]), probability=float(lv["probability"]),
                               n=int(lv["n"]), right=int(lv["right"])) for lv in d["levels"]))


@dataclass(frozen=True)
class Calibration:
    verdict: Curve
    hypothesis: Curve | None
    source: str  # what it was fitted on, for the report's wording
    domains: dict[str, int] = field(default_factory=dict)  # lab verdicts naming each domain

    def outside(self, verdict: Verdict, score: float) -> str | None:
        """Why this verdict lies outside what the lab covered, or None."""
        if not self.verdict.covers(score):
            return (f"its score {score:.2f} is outside the lab's {self.verdict.lo:.2f}–{self.verdict.hi:.2f}")
        rare = [d for d in verdict.domains if self.domains.get(d, 0) < MIN_DOMAIN_SUPPORT]
        if rare:
            return "the lab named " + ", ".join(f"{d} {self.domains.get(d, 0)} time(s)" for d in rare)
        return None

    def describe(self, verdict: Verdict, score: float) -> str:
        """The support of the probability at ``score``: ``"41 of 50 lab verdicts at this level were
        right"``, plus what the lab did not cover."""
        lv = self.verdict.level(score)
        text = (f"{lv.right} of {lv.n} lab verdict{'s' if lv.n != 1 else ''} at this level "
                f"{'were' if lv.n != 1 else 'was'} right")
        why = self.outside(verdict, score)
        return text + (f"; outside what the lab covered: {why}" if why else "")

    def apply(self, verdict: Verdict) -> Verdict:
        """Scores to probabilities, in place (see the module docstring); returns the verdict."""
        if verdict.score is not None:  # applied already
            return verdict
        for h in verdict.hypotheses:
            h.score = h.confidence
            if self.hypothesis is not None:
                h.confidence = self.hypothesis.probability(h.score)
        verdict.score = verdict.confidence
        if verdict.domains:
            verdict.confidence = self.verdict.probability(verdict.score)
            verdict.calibration = self.describe(verdict, verdict.score)
        elif self.hypothesis is not None:
            verdict.confidence = self.hypothesis.probability(verdict.score)
        return verdict

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "verdict": self.verdict.to_dict(),
                "hypothesis": self.hypothesis.to_dict() if self.hypothesis else None, "domains": dict(self.domains)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(verdict=Curve.from_dict(d["verdict"]),
                   hypothesis=Curve.from_dict(d["hypothesis"]) if d.get("hypothesis") else None,
                   source=str(d.get("source") or "lab"),
                   domains={str(k): int(v) for k, v in (d.get("domains") or {}).items()})


def load(path: Path | None) -> Calibration | None:
    """The calibration in ``path``; None (logged) when there is none or it cannot be read."""
    if path is None or not path.is_file():
        return None
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("event=calibration_unreadable path=%s error=%s", path, e)
        return None
