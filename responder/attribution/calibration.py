"""What a confidence has meant in the lab: the precision observed at that confidence.

The lab's scorecard (``llmslo lab run``/``report``) holds a reliability table: for each confidence
bin, how many verdicts fell in it and what share of them were right. The responder loads the
table (``LLMSLO_CALIBRATION_FILE``, a scorecard.json or just its ``calibration`` part) so each
report can say "in the lab, verdicts at this confidence were right N% of the time (n cases)". No
table, or a bin with no cases, says nothing rather than guess.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    bins: tuple[dict[str, Any], ...]
    source: str  # what the table was measured on, for the report's wording

    def precision_at(self, confidence: float) -> tuple[float, int] | None:
        """(observed precision, cases) for the bin holding ``confidence``; None when unknown."""
        for i, b in enumerate(self.bins):
            last = i == len(self.bins) - 1
            if b["lo"] <= confidence < b["hi"] or (last and confidence >= b["hi"]):
                if b.get("n") and b.get("precision") is not None:
                    return float(b["precision"]), int(b["n"])
                return None
        return None

    def describe(self, confidence: float) -> str | None:
        found = self.precision_at(confidence)
        if found is None:
            return None
        precision, n = found
        return (f"in the lab ({self.source}), verdicts at this confidence were right {precision:.0%} of the time "
                f"({n} case{'s' if n != 1 else ''})")


def load(path: Path | None) -> Calibration | None:
    """The table in ``path``; None (logged) when there is none or it cannot be read."""
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        table = data.get("calibration", data)
        bins = tuple(sorted(({"lo": float(b["lo"]), "hi": float(b["hi"]), "n": int(b.get("n") or 0),
                              "precision": b.get("precision")} for b in table["bins"]), key=lambda b: b["lo"]))
        source = str(data.get("source") or table.get("source") or f"{data.get('mode', 'combined')} mode, "
                     f"{table.get('n', sum(b['n'] for b in bins))} verdicts")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("event=calibration_unreadable path=%s error=%s", path, e)
        return None
    return Calibration(bins, source)
