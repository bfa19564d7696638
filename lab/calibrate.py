"""Fitting the responder's calibration on the lab's cases, and the split it is fitted and judged on.

**The split.** A case belongs to the *training* or the *held-out* part by its scenario's seed
(``split_of``: a hash of the seed, so about ``HELD_OUT_SHARE`` of the seeds are held out, and a
scenario re-run lands in the same part). Nothing about a case's result decides its part.
Thresholds and the calibration are tuned on the training part only; the targets are judged on
the held-out part. Within the training part, ``fold_of`` deals the seeds into ``FOLDS`` folds
for cross-validation.

**The fit.** ``fit_curve`` runs scikit-learn's ``IsotonicRegression`` (non-decreasing, clipped to
[0, 1]) of "was it right" (1/0) on the engine's score, and keeps the result as levels: each run of
training points that the fit pooled to one value becomes a level with its score range, that
value, and how many verdicts it holds and how many were right. ``fit`` makes the two curves the
responder uses (``responder.attribution.calibration``): verdicts (right: every named domain was
injected) and hypotheses (right: that domain was injected).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from responder.attribution.calibration import Calibration, Curve, Level

HELD_OUT_SHARE = 0.3
FOLDS = 5
# Fewer training points than this: no curve (isotonic regression on a handful of points says little).
MIN_POINTS = 8


def _seed_hash(case: dict[str, Any]) -> int:
    key = case.get("seed")
    key = key if key is not None else (case.get("scenario") or {}).get("seed")
    if key is None:
        key = case.get("name", "")
    return int.from_bytes(hashlib.sha256(f"llmslo-lab-split:{key}".encode()).digest()[:8], "big")


def split_of(case: dict[str, Any]) -> str:
    """``"held-out"`` or ``"training"``, from the scenario's seed (its name when it has none)."""
    return "held-out" if _seed_hash(case) % 1000 < HELD_OUT_SHARE * 1000 else "training"


def fold_of(case: dict[str, Any], folds: int = FOLDS) -> int:
    """The cross-validation fold of a training case, from its seed (independent of ``split_of``)."""
    return (_seed_hash(case) // 1000) % folds


def fit_curve(points: Sequence[tuple[float, bool]]) -> Curve | None:
    """The isotonic fit of right (1/0) on score, as levels; None with fewer than MIN_POINTS."""
    if len(points) < MIN_POINTS:
        return None
    from sklearn.isotonic import IsotonicRegression  # the lab's dependency, not the responder's

    pts = sorted((float(s), 1.0 if r else 0.0) for s, r in points)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(xs, ys).predict(xs)
    levels: list[Level] = []
    i = 0
    while i < len(pts):
        j = i
        while j + 1 < len(pts) and abs(fitted[j + 1] - fitted[i]) < 1e-12:
            j += 1
        n = j - i + 1
        right = int(round(sum(ys[i:j + 1])))
        levels.append(Level(lo=round(xs[i], 4), hi=round(xs[j], 4), probability=round(right / n, 4), n=n, right=right))
        i = j + 1
    return Curve(tuple(levels))


def verdict_points(rows: Iterable[dict[str, Any]]) -> list[tuple[float, bool]]:
    """(score, right) of each answered verdict (scorecard rows)."""
    return [(r["score"], bool(r["correct"])) for r in rows if r["predicted"]]


def hypothesis_points(rows: Iterable[dict[str, Any]]) -> list[tuple[float, bool]]:
    """(score, that domain was injected) of every hypothesis the engine weighed with a score > 0."""
    return [(h["score"], h["domain"] in r["expect"]) for r in rows for h in r.get("hypotheses", []) if h["score"] > 0]


def fit(rows: list[dict[str, Any]], source: str) -> Calibration | None:
    """The responder's calibration from scored rows (the training part's); None without enough."""
    verdict = fit_curve(verdict_points(rows))
    if verdict is None:
        return None
    named = Counter(d for r in rows if r["predicted"] for d in r["predicted"])
    return Calibration(verdict=verdict, hypothesis=fit_curve(hypothesis_points(rows)), source=source,
                       domains=dict(sorted(named.items())))


def out_of_fold(rows: list[dict[str, Any]], folds: int = FOLDS) -> dict[str, float]:
    """Each answered training row's calibrated probability from a fit on the other folds
    (name -> probability); rows whose fold's complement has too few points are left out."""
    out: dict[str, float] = {}
    for k in range(folds):
        train = [r for r in rows if r["fold"] != k]
        curve = fit_curve(verdict_points(train))
        if curve is None:
            continue
        for r in rows:
            if r["fold"] == k and r["predicted"]:
                out[r["name"]] = curve.probability(r["score"])
    return out


def ece(pairs: Sequence[tuple[float, bool]], bins: int = 10) -> float | None:
    """Expected calibration error of (probability, right) pairs over equal-width bins."""
    if not pairs:
        return None
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(p, r) for p, r in pairs if lo <= p < hi or (b == bins - 1 and p >= hi)]
        if inside:
            conf = sum(p for p, _ in inside) / len(inside)
            acc = sum(1 for _, r in inside if r) / len(inside)
            total += len(inside) / len(pairs) * abs(acc - conf)
    return total
