"""The lab's scorecard: from the recorded cases (``DIR/cases/NAME.json``, written by
``lab.runner``) and an evidence mode to ``scorecard.json``, ``scorecard.md`` and two PNG charts.

Modes are an ablation over the *same* evidence. Every case keeps the incident exactly as the
responder stored it (its kernel capture and its trace evidence); the scorecard re-attributes it
with ``responder.attribution.engine.attribute``: ``combined`` passes both, ``kernel-only`` the capture
alone, ``traces-only`` the traces alone. So one lab run scores every mode, and a re-tuned engine
can be re-scored on a stored run without re-running the faults (``llmslo lab report DIR``).

How a case counts (multi-fault cases included). ``E`` is the case's expected domains (its
ground truth, ``[]`` for a no-fault case) and ``P`` the domains the verdict names (``[]`` =
abstained).

* Precision, recall and F1 are per domain, one domain against the rest (binary relevance), so a
  case with two expected domains is two independent questions. For domain ``d`` and an
  *answered* case (``P`` not empty): ``d`` in ``E`` and in ``P`` is a true positive, in ``P`` only
  a false positive, in ``E`` only a false negative. An abstained case makes no claim: it is left
  out of ``precision``, ``recall`` and ``f1`` (the issue's targets are "over non-abstained
  cases") and counted by the abstain rate instead. ``recall_with_abstain`` and
  ``f1_with_abstain`` count it as a false negative for each of its expected domains, so a mode
  that stays silent about what it cannot see is not scored as if it had been right; the
  ablation target uses ``f1_with_abstain`` over all cases for that reason.
* Macro averages are the plain mean over the domains where the metric is defined (a non-zero
  denominator); ``per_domain`` shows ``null`` where it is not. ``f1_with_abstain`` is defined for
  every domain that was expected or predicted at least once.
* The confusion matrix is for reading, not for the metrics above. Rows are expected domains and
  ``no_fault``; columns are predicted domains, ``missed`` and ``abstain``. Following the
  multi-label confusion matrix of Heydarian et al. (IEEE Access, 2022), per case: each expected
  domain that was named counts once on the diagonal; if the case abstained, each expected domain
  (or ``no_fault``) counts once under ``abstain``; a wrongly named domain counts against each
  expected domain the verdict missed, or, when it missed none, against every expected domain
  (nothing says which true fault it was confused with); an expected domain that was missed while
  the verdict named only other true domains counts under ``missed``; a no-fault case that named
  domains counts once per named domain on the ``no_fault`` row. A row can therefore hold more
  than one count per case.
* Calibration: over answered cases, a verdict is correct when every domain it names was
  expected (``P`` ⊆ ``E``): the precision a reader gets from that confidence. Ten equal bins of
  confidence; expected calibration error ``ECE = sum_b n_b / N * |precision_b - confidence_b|``.
* Felt faults: a faulted case whose fault the service's requests did not feel (no alert fired,
  and during the fault phase the load's error ratio stayed within UNFELT_ERROR_POINTS of the
  baseline's and its p90 under UNFELT_P90_RATIO times it) is left out of the single- and
  multi-fault targets: there was no incident to explain, and abstaining on it is not a miss. It
  stays in every other table, and the scorecard says how its verdicts went. The rule reads only
  the load the runner measured, never the verdict.
* Detection: a faulted case is detected when a real alert created its incident after the fault
  began (not the lab's ad hoc trigger); ``detection_s`` runs from the first fault's onset to the
  incident's ``attributed_at``. Percentiles interpolate linearly between order statistics. An
  alert during a no-fault case is a false alarm, reported beside the rate. Where the responder
  posted a preliminary verdict at the alert's receipt, the first attributed post is that one: the
  scorecard gives onset -> first post, alert receipt -> first post, and how often the capture
  changed the preliminary verdict (right to wrong counted apart).
* Kernel early warning: over the cases whose runs recorded the agent's warnings, a faulted case
  whose injected domains include one the kernel sees by a cause (``WARNABLE``) is warned when a
  warning for an injected domain fired after the fault phase began; the scorecard gives onset ->
  warning, how often it came before the alert's incident, warnings naming a domain that was not
  injected, and warnings on no-fault cases.
* Anomalies: an injected anomaly (``rogue_egress``'s peer, ``unexpected_exec``'s program) is
  flagged when the agent flagged that exact peer or path after the fault phase began; any other
  flag during a case counts against it, and a control (no fault, no anomaly) with a flag is a
  false one.
"""
from __future__ import annotations

import gzip
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture.attribution.rules import KERNEL_RULES, SYMPTOM
from capture.attribution.verdict import DOMAINS
from lab import calibrate

MODES = ("combined", "traces-only", "kernel-only")
NO_FAULT = "no_fault"
ABSTAIN = "abstain"
MISSED = "missed"
CALIBRATION_BINS = 10
# The targets, judged on the held-out part of a run (lab.calibrate.split_of), combined mode.
TARGET_EXACT = 0.90  # single faults: the verdict names exactly the injected domain
TARGET_ABSTAIN = 0.08
TARGET_PRECISION = 0.95  # single faults: answered verdicts that name only the injected domain
TARGET_BOTH = 0.60  # multi-fault: every injected domain named
CONFIDENT = 0.8  # no multi-fault verdict names a domain not injected at this calibrated confidence
TARGET_ECE = 0.05
TARGET_F1_LEAD = 0.30  # combined macro-F1 (abstain = miss) at least 30 points above traces-only
TARGET_KERNEL_PRECISION = 0.9
KERNEL_PRECISION_DOMAINS = ("network", "dns", "app_cpu", "app_memory", "provider_throttling")
# A fault the requests did not feel: no alert, the error ratio within this of the baseline's and
# the p90 under this times the baseline's (the lab's steady load moves its p90 by a few percent).
UNFELT_ERROR_POINTS = 0.01
UNFELT_P90_RATIO = 1.25
SCORECARD_FILES = ("scorecard.json", "scorecard.md", "confusion.png", "reliability.png", "risk_coverage.png")


class ScorecardError(Exception):
    """Stored cases or scorecards that cannot be read; the message names the file."""


# --- reading cases -----------------------------------------------------------------------------

PACKED = "cases.jsonl.gz"


def load_cases(run_dir: Path) -> list[dict[str, Any]]:
    """Every case of a run, in the order the runner finished them: the packed ones
    (``cases.jsonl.gz``) and those still in ``cases/*.json`` (a run going on, or resumed after it
    was packed); a case in both is read from ``cases/``."""
    case_dir, packed = Path(run_dir) / "cases", Path(run_dir) / PACKED
    if not case_dir.is_dir() and not packed.is_file():
        raise ScorecardError(f"{run_dir}: no cases/ directory or {PACKED} (not a lab run?)")
    by_name = {c["name"]: c for c in _packed(packed)} if packed.is_file() else {}
    if case_dir.is_dir():
        for path in sorted(case_dir.glob("*.json")):
            try:
                case = _case(json.loads(path.read_text()), path)
            except (OSError, ValueError) as e:
                raise ScorecardError(f"{path}: cannot read the case: {e}") from None
            by_name[case["name"]] = case
    return sorted(by_name.values(), key=lambda c: (c.get("finished_at") or 0, c["name"]))


def _packed(packed: Path) -> list[dict[str, Any]]:
    try:
        with gzip.open(packed, "rt") as f:
            return [_case(json.loads(line), f"{packed}:{n}") for n, line in enumerate(f, 1)]
    except (OSError, EOFError, ValueError) as e:
        raise ScorecardError(f"{packed}: cannot read the cases: {e}") from None


def case_names(run_dir: Path, valid_only: bool = False) -> set[str]:
    """The names of a run's cases, packed or not (``valid_only``: leave out those marked invalid)."""
    try:
        cases = load_cases(run_dir)
    except ScorecardError:
        return set()
    return {c["name"] for c in cases if not (valid_only and c.get("invalid"))}


def _case(case: Any, where: Any) -> dict[str, Any]:
    if not (isinstance(case, dict) and isinstance(case.get("name"), str) and isinstance(case.get("expect"), list)):
        raise ScorecardError(f"{where}: not a lab case (expected an object with name and expect)")
    return case


def pack_cases(run_dir: Path) -> Path:
    """A run's cases in one ``cases.jsonl.gz`` (a case per line, in the order they finished),
    merged with what it packed before and checked by reading it back; then the case files it
    packed are removed (a case written meanwhile by a run still going stays for the next pack)."""
    run_dir = Path(run_dir)
    case_dir = run_dir / "cases"
    if not case_dir.is_dir():
        raise ScorecardError(f"{run_dir}: no cases/ directory to pack")
    files = sorted(case_dir.glob("*.json"))
    cases = load_cases(run_dir)
    target, tmp = run_dir / PACKED, run_dir / (PACKED + ".tmp")
    with gzip.open(tmp, "wt", compresslevel=9) as f:
        for case in cases:
            f.write(json.dumps(case, sort_keys=True, separators=(",", ":")) + "\n")
    with gzip.open(tmp, "rt") as f:
        if [json.loads(line) for line in f] != cases:
            tmp.unlink()
            raise ScorecardError(f"{tmp}: the packed cases do not read back the same")
    tmp.replace(target)
    for path in files:
        path.unlink()
    try:
        case_dir.rmdir()
    except OSError:
        pass  # a case arrived meanwhile
    return target


def reattribute(incident: dict[str, Any] | None, mode: str):
    """The verdict of ``mode`` over a stored incident's evidence (a ``capture.attribution.verdict.Verdict``)."""
    from capture.attribution.verdict import Verdict
    from capture.schemas import CaptureResult
    from responder.attribution.engine import attribute

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not incident:
        return Verdict(domains=[], confidence=0.0, abstain_reason="no incident was recorded for this case")
    capture = CaptureResult.from_dict(incident["capture"]) if incident.get("capture") else None
    traces = (incident.get("evidence") or {}).get("traces") or None
    if mode == "kernel-only":
        traces = None
    elif mode == "traces-only":
        capture = None
    return attribute(capture, traces)


# --- per-case rows -----------------------------------------------------------------------------

def felt(case: dict[str, Any]) -> bool:
    """Whether a faulted case's fault reached the service's requests (the module docstring's
    "felt faults"); True when the runner's load figures cannot tell."""
    if case.get("detected"):
        return True
    load = case.get("load") or {}
    base, fault = load.get("baseline") or {}, load.get("faults") or {}
    try:
        errors_rose = float(fault["ok_ratio"]) < float(base["ok_ratio"]) - UNFELT_ERROR_POINTS
        slower = float(fault["latency_s"]["p90"]) >= UNFELT_P90_RATIO * float(base["latency_s"]["p90"])
    except (KeyError, TypeError, ValueError):
        return True
    return errors_rose or slower


def case_kind(expect: list[str]) -> str:
    return "no_fault" if not expect else "single_fault" if len(expect) == 1 else "multi_fault"


def score_case(case: dict[str, Any], mode: str) -> dict[str, Any]:
    """One row of ``scorecard.json``'s ``cases``."""
    incident = case.get("incident")
    verdict = reattribute(incident, mode)
    expect = list(dict.fromkeys(case["expect"]))
    predicted = list(dict.fromkeys(verdict.domains))
    capture = (incident or {}).get("capture") or {}
    live = (incident or {}).get("verdict") or {}
    from lab.calibrate import fold_of, split_of

    ranked = sorted(verdict.hypotheses, key=lambda h: -h.confidence)
    row = {
        "name": case["name"], "expect": expect, "predicted": predicted,
        # the engine's score (re-attribution applies no calibration); "probability" is added by
        # score() from a calibration fitted on the training part
        "confidence": round(float(verdict.confidence), 3), "score": round(float(verdict.confidence), 3),
        "hypotheses": [{"domain": h.domain, "score": round(float(h.confidence), 3)} for h in ranked if h.confidence > 0],
        "part": split_of(case), "fold": fold_of(case),
        "detected": bool(case.get("detected")), "detection_s": case.get("detection_s"),
        "overhead": capture.get("cost"),
        "kind": case_kind(expect),
        "felt": felt(case) if expect else None,
        "correct": (set(predicted) <= set(expect)) if predicted else None,
        "abstain_reason": verdict.abstain_reason if not predicted else None,
        "trigger": case.get("trigger"),
        # What the responder itself said during the run (the engine of that day, combined evidence).
        "live_predicted": live.get("domains"),
        "error": case.get("error"),
    }
    row.update(preliminary_row(case, mode, expect, predicted))
    row.update(early_warning_row(case, expect))
    row.update(anomaly_row(case))
    if not incident and case.get("error"):
        row["abstain_reason"] = f"no verdict: {case['error']}"
    return row


def preliminary_row(case: dict[str, Any], mode: str, expect: list[str], predicted: list[str]) -> dict[str, Any]:
    """The verdict posted at the alert's receipt (re-attributed in ``mode`` from the evidence it
    rested on, like the capture's) and when it was posted: from the fault's onset and from the
    alert's receipt (the incident's creation). Empty fields for a case without one."""
    incident = case.get("incident") or {}
    prelim = incident.get("preliminary") or {}
    if not prelim.get("verdict"):
        return {"preliminary_predicted": None, "preliminary_correct": None, "first_post_s": None,
                "alert_to_first_post_s": None}
    verdict = reattribute({"capture": prelim.get("capture"), "evidence": prelim.get("evidence")}, mode)
    named = list(dict.fromkeys(verdict.domains))
    at = float(prelim["at"])
    first_post = None
    if case.get("detected") and case.get("detection_s") is not None and incident.get("attributed_at"):
        attributed = float(incident["attributed_at"])
        onset = attributed - float(case["detection_s"])
        # the incident's first preliminary post; records without first_at hold the latest job's,
        # which may come after the capture verdict of an earlier job: then that bounds it
        first_post = round(min(float(prelim.get("first_at") or at), attributed) - onset, 3)
    # The incident's first alert received -> its first post. A later alert of the same incident (another
    # burn window of the group) is a new job that waits for the running capture, and its preliminary
    # verdict updates a thread that already has one: it is not the first post. Records before jobs kept
    # their receipt (received_at) did not keep the first post's time either.
    first_at = prelim.get("first_at")
    alert_to_first = (round(float(first_at) - float(incident["created_at"]), 3)
                      if prelim.get("received_at") is not None and first_at and incident.get("created_at") else None)
    return {"preliminary_predicted": named, "preliminary_correct": (set(named) <= set(expect)) if named else None,
            "first_post_s": first_post, "alert_to_first_post_s": alert_to_first}


# The domains a kernel early warning can name from a cause of its own (not only from a slower
# call, a symptom many causes share); demand never fires one (capture.early_warning).
WARNABLE = frozenset(r.domain for r in KERNEL_RULES if r.role != SYMPTOM) - {"traffic"}


def service_workload(case: dict[str, Any], workload: str | None) -> bool:
    """Whether an early warning's or a flag's workload is the case's service. The case names it
    (``service_workload``); a case recorded before that was kept is matched by kind: the only
    plain cgroup a lab agent scores is the service's (the stack's pattern), the rest being other
    runtimes' containers or pods that happened to run on the node."""
    if workload is None:  # recorded before warnings and flags named their workload
        return True
    if case.get("service_workload"):
        return workload == case["service_workload"]
    return workload.startswith("cgroup:")


def early_warning_row(case: dict[str, Any], expect: list[str]) -> dict[str, Any]:
    """The agent's kernel early warnings on the service during the case (runs that recorded them): the domains
    that fired after the fault phase began, how soon after the onset one of the injected domains
    fired, whether that came before the alert's incident, and the domains it named that were not
    injected. None fields for a case recorded before the early warning existed."""
    if "early_warnings" not in case:
        return {"early_warning_recorded": False}
    start = case.get("fault_phase_started_at") or case.get("started_at") or 0.0
    fired = [w for w in case["early_warnings"] if float(w.get("firing_since") or 0.0) >= start
             and service_workload(case, w.get("workload"))]
    onset = case.get("fault_onset")
    right = sorted(float(w["firing_since"]) for w in fired if w.get("domain") in expect)
    incident = case.get("incident") or {}
    first = right[0] if right else None
    ended = case.get("fault_phase_ended_at")
    return {
        "early_warning_recorded": True,
        "fault_phase_s": round(float(ended) - float(start), 3) if ended and start else 0.0,
        "early_warnings_fired": len(fired),
        "early_warned": sorted({str(w.get("domain")) for w in fired}),
        "early_warning_wrong": sorted({str(w.get("domain")) for w in fired if w.get("domain") not in expect}),
        "warnable": bool(set(expect) & WARNABLE),
        "early_warning_s": round(first - float(onset), 3) if first is not None and onset else None,
        "early_warning_before_alert": (first < float(incident["created_at"]) if first is not None and case.get("detected")
                                       and incident.get("created_at") else None),
    }


def anomaly_row(case: dict[str, Any]) -> dict[str, Any]:
    """The anomalies a case injected (a rogue egress peer, an unexpected executable) and whether the
    agent flagged each, and the flags it raised on anything else the service did during the case. None fields for
    a case recorded before anomalies were scored."""
    if "anomalies" not in case:
        return {"anomaly_recorded": False}
    injected = [fr["anomaly"] for fr in case.get("faults") or [] if fr.get("anomaly")]
    start = case.get("fault_phase_started_at") or case.get("started_at") or 0.0
    flags = [a for a in case["anomalies"] if float(a.get("first_seen") or 0.0) >= start
             and service_workload(case, a.get("workload"))]

    def matches(a: dict[str, Any], inj: dict[str, Any]) -> bool:
        return a.get("kind") == inj["kind"] and a.get("what") == inj["what"]

    return {"anomaly_recorded": True, "anomalies_injected": len(injected),
            "anomalies_flagged": sum(1 for inj in injected if any(matches(a, inj) for a in flags)),
            "anomaly_flags_other": sorted(f"{a.get('kind')} {a.get('what')}" for a in flags
                                          if not any(matches(a, inj) for inj in injected))}


# --- aggregates --------------------------------------------------------------------------------

def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def _mean(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between order statistics (numpy's default method)."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def domain_metrics(rows: list[dict[str, Any]], domains: Iterable[str] = DOMAINS) -> dict[str, dict[str, Any]]:
    """Per-domain counts and P/R/F1, one domain against the rest (see the module docstring)."""
    out = {}
    for d in domains:
        tp = fp = fn = fn_abstain = support = 0
        for r in rows:
            e, p = d in r["expect"], d in r["predicted"]
            support += e
            if not r["predicted"]:
                fn_abstain += e
                continue
            tp += e and p
            fp += p and not e
            fn += e and not p
        precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
        out[d] = {
            "support": support, "tp": tp, "fp": fp, "fn": fn, "abstained": fn_abstain,
            "precision": precision, "recall": recall, "f1": _div(2 * tp, 2 * tp + fp + fn),
            "recall_with_abstain": _div(tp, tp + fn + fn_abstain),
            "f1_with_abstain": _div(2 * tp, 2 * tp + fp + fn + fn_abstain),
        }
    return out


def scope_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per = domain_metrics(rows)
    answered = [r for r in rows if r["predicted"]]
    keys = ("precision", "recall", "f1", "recall_with_abstain", "f1_with_abstain")
    return {
        "cases": len(rows), "answered": len(answered), "abstained": len(rows) - len(answered),
        "abstain_rate": _div(len(rows) - len(answered), len(rows)),
        "exact": sum(1 for r in answered if set(r["predicted"]) == set(r["expect"])),
        "per_domain": per,
        "macro": {k: _mean(m[k] for m in per.values()) for k in keys},
    }


def confusion(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The multi-label confusion matrix of the module docstring."""
    row_names = list(DOMAINS) + [NO_FAULT]
    col_names = list(DOMAINS) + [MISSED, ABSTAIN]
    m = {r: {c: 0 for c in col_names} for r in row_names}
    for r in rows:
        e, p = list(r["expect"]), list(r["predicted"])
        if not p:
            for d in e or [NO_FAULT]:
                m[d][ABSTAIN] += 1
            continue
        if not e:
            for d in p:
                m[NO_FAULT][d] += 1
            continue
        hits = [d for d in e if d in p]
        missed = [d for d in e if d not in p]
        wrong = [d for d in p if d not in e]
        for d in hits:
            m[d][d] += 1
        for d in missed:
            if wrong:
                for w in wrong:
                    m[d][w] += 1
            else:
                m[d][MISSED] += 1
        if wrong and not missed:
            for d in e:
                for w in wrong:
                    m[d][w] += 1
    return {"rows": row_names, "columns": col_names, "matrix": [[m[r][c] for c in col_names] for r in row_names]}


def calibration(rows: list[dict[str, Any]], bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    answered = [r for r in rows if r["predicted"]]
    table: list[dict[str, Any]] = []  # a bin with n > 0 has a precision and a mean confidence
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [r for r in answered if lo <= r["confidence"] < hi or (b == bins - 1 and r["confidence"] >= hi)]
        table.append({
            "lo": round(lo, 3), "hi": round(hi, 3), "n": len(inside),
            "mean_confidence": _mean(r["confidence"] for r in inside),
            "precision": _div(sum(1 for r in inside if r["correct"]), len(inside)),
        })
    n = len(answered)
    ece = (sum(t["n"] / n * abs(t["precision"] - t["mean_confidence"]) for t in table if t["n"]) if n else None)
    return {"bins": table, "ece": ece, "n": n}


def detection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    faulted = [r for r in rows if r["expect"]]
    detected = [r for r in faulted if r["detected"]]
    times = [float(r["detection_s"]) for r in detected if r["detection_s"] is not None]
    # The first attributed post: the preliminary verdict's when there was one, else the capture's.
    first = [float(r["first_post_s"]) if r.get("first_post_s") is not None else float(r["detection_s"])
             for r in detected if r["detection_s"] is not None]
    receipt = [float(r["alert_to_first_post_s"]) for r in rows if r.get("alert_to_first_post_s") is not None]
    prelim = [r for r in rows if r.get("preliminary_predicted") is not None]
    changed = [r for r in prelim if set(r["preliminary_predicted"]) != set(r["predicted"])]
    recorded = [r for r in rows if r.get("early_warning_recorded")]
    warnable = [r for r in recorded if r["expect"] and r["warnable"]]
    warned = [r for r in warnable if r["early_warning_s"] is not None]
    lead = [float(r["early_warning_s"]) for r in warned]
    paged = [r for r in warned if r["early_warning_before_alert"] is not None]
    return {
        "faulted_cases": len(faulted), "detected": len(detected), "rate": _div(len(detected), len(faulted)),
        "p50_s": percentile(times, 0.50), "p95_s": percentile(times, 0.95), "max_s": max(times) if times else None,
        "false_alarms": sum(1 for r in rows if not r["expect"] and r["detected"]),
        "no_fault_cases": sum(1 for r in rows if not r["expect"]),
        "first_post_p50_s": percentile(first, 0.50), "first_post_p95_s": percentile(first, 0.95),
        "alert_to_first_post_p50_s": percentile(receipt, 0.50), "alert_to_first_post_p95_s": percentile(receipt, 0.95),
        "alert_to_first_post_max_s": max(receipt) if receipt else None,
        "preliminary": {
            "n": len(prelim), "changed": len(changed),
            "changed_rate": _div(len(changed), len(prelim)),
            # by the expected domains: a preliminary verdict that was right (named only injected
            # domains) and a capture's that named one that was not
            "right_to_wrong": sum(1 for r in changed if r["preliminary_correct"] and r["correct"] is False),
            "wrong_to_right": sum(1 for r in changed if r["preliminary_correct"] is False and r["correct"]),
            "abstained_then_named": sum(1 for r in changed if not r["preliminary_predicted"] and r["predicted"]),
            "named_then_abstained": sum(1 for r in changed if r["preliminary_predicted"] and not r["predicted"]),
        },
        # anomalies (what a workload never did before), over the cases whose runs scored them
        "anomalies": {
            "cases": len(scored := [r for r in rows if r.get("anomaly_recorded")]),
            "injected": sum(r["anomalies_injected"] for r in scored),
            "flagged": sum(r["anomalies_flagged"] for r in scored),
            "rate": _div(sum(r["anomalies_flagged"] for r in scored), sum(r["anomalies_injected"] for r in scored)),
            # cases that injected no anomaly and got a flag anyway (controls and other faults), and no-fault ones
            "flagged_without_injection": sum(1 for r in scored if not r["anomalies_injected"] and r["anomaly_flags_other"]),
            "without_injection": sum(1 for r in scored if not r["anomalies_injected"]),
            "controls_flagged": sum(1 for r in scored if not r["anomalies_injected"] and not r["expect"]
                                    and r["anomaly_flags_other"]),
            "controls": sum(1 for r in scored if not r["anomalies_injected"] and not r["expect"]),
        },
        # the agent's kernel early warning, over the cases whose runs recorded it
        "early_warning": {
            "cases": len(recorded), "warnable_faulted": len(warnable), "warned": len(warned),
            "rate": _div(len(warned), len(warnable)),
            "onset_to_warning_p50_s": percentile(lead, 0.50), "onset_to_warning_p95_s": percentile(lead, 0.95),
            "detected_and_warned": len(paged),
            "before_alert": sum(1 for r in paged if r["early_warning_before_alert"]),
            "before_alert_rate": _div(sum(1 for r in paged if r["early_warning_before_alert"]), len(paged)),
            # a warning naming a domain that was not injected (any case), and any warning on a no-fault case
            "wrong_domain_cases": sum(1 for r in recorded if r["early_warning_wrong"] and r["expect"]),
            "no_fault_cases": sum(1 for r in recorded if not r["expect"]),
            "on_no_fault_cases": sum(1 for r in recorded if not r["expect"] and r["early_warned"]),
            # the soak's figure: warnings fired on no-fault cases per hour of their fault phases
            "no_fault_hours": round(hours := sum(r.get("fault_phase_s", 0.0) for r in recorded if not r["expect"])
                                    / 3600, 3),
            "false_per_hour": _div(sum(r.get("early_warnings_fired", 0) for r in recorded if not r["expect"]), hours),
        },
    }


def confident_wrong(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Multi-fault and no-fault cases whose verdict names a domain not injected, at >= CONFIDENT."""
    return [{"name": r["name"], "expect": r["expect"], "predicted": r["predicted"], "confidence": r["confidence"]}
            for r in rows if r["kind"] in ("multi_fault", "no_fault") and r["predicted"]
            and not set(r["predicted"]) <= set(r["expect"]) and r["confidence"] >= CONFIDENT]


def overhead(rows: list[dict[str, Any]]) -> dict[str, Any]:
    costs = [r["overhead"] for r in rows if r["overhead"]]
    return {
        "captures": len(costs),
        "mean_bpf_ms": _mean(c.get("bpf_run_time_ns", 0) / 1e6 for c in costs),
        "mean_agent_cpu_s": _mean(c.get("agent_cpu_s", 0.0) for c in costs),
        "mean_events": _mean(c.get("events", 0) for c in costs),
        "lost_events": sum(c.get("lost", 0) for c in costs),
    }


@dataclass
class Target:
    name: str
    goal: str
    value: float | None
    met: bool | None  # None: not measurable on these cases (or not this mode's target)
    unit: str = ""  # how the value reads: "", "%", "s", "count" or "points" (a difference of F1s)

    def shown(self) -> str:
        v = self.value
        if v is None:
            return "–"
        return {"%": f"{v:.0%}", "s": f"{v:.0f} s", "count": f"{v:.0f}",
                "points": f"{v * 100:+.1f} points"}.get(self.unit, f"{v:.2f}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "value": self.value, "met": self.met, "unit": self.unit}


def _exact(r: dict[str, Any]) -> bool:
    return bool(r["predicted"]) and set(r["predicted"]) == set(r["expect"]) or (not r["expect"] and not r["predicted"])


def targets(held: list[dict[str, Any]], mode: str, traces_only: list[dict[str, Any]] | None,
            kernel_only: list[dict[str, Any]] | None, held_out_ece: float | None) -> list[Target]:
    """The targets, judged on the held-out part's rows (``held``; and the same cases in
    traces-only and kernel-only mode, for the ablation targets, judged in combined mode only)."""
    single = [r for r in held if r["kind"] == "single_fault" and r.get("felt", True)]
    answered = [r for r in single if r["predicted"]]
    multi = [r for r in held if r["kind"] == "multi_fault" and r.get("felt", True)]
    controls = [r for r in held if r["kind"] == "no_fault"]
    surges = [r for r in held if r["expect"] == ["traffic"]]
    confident_wrong = [r for r in multi if r["predicted"] and not set(r["predicted"]) <= set(r["expect"])
                       and (r.get("probability") or 0.0) >= CONFIDENT]
    lead = None
    if traces_only is not None:
        f1, ref = scope_summary(held)["macro"]["f1_with_abstain"], scope_summary(traces_only)["macro"]["f1_with_abstain"]
        lead = f1 - ref if f1 is not None and ref is not None else None
    kernel_p = None
    if kernel_only is not None:
        per = domain_metrics(kernel_only, KERNEL_PRECISION_DOMAINS)
        defined = [m["precision"] for m in per.values() if m["precision"] is not None]
        kernel_p = min(defined) if defined else None
    combined = mode == "combined"

    def share(xs: list, ok) -> float | None:
        return _div(sum(1 for x in xs if ok(x)), len(xs))

    def at_least(v, goal):
        return None if v is None else v >= goal - 1e-9

    def at_most(v, goal):
        return None if v is None else v <= goal + 1e-9

    exact = share(single, _exact)
    abstain = share(single, lambda r: not r["predicted"])
    precision = share(answered, lambda r: r["correct"])
    both = share(multi, lambda r: set(r["expect"]) <= set(r["predicted"]))
    named_on_controls = float(sum(1 for r in controls if r["predicted"])) if controls else None
    surge_named = share(surges, lambda r: r["predicted"] == ["traffic"])
    return [
        Target("single faults: exact verdicts", f">= {TARGET_EXACT:.0%}", exact, at_least(exact, TARGET_EXACT), "%"),
        Target("single faults: abstain rate", f"<= {TARGET_ABSTAIN:.0%}", abstain, at_most(abstain, TARGET_ABSTAIN), "%"),
        Target("single faults: precision over answered", f">= {TARGET_PRECISION}", precision,
               at_least(precision, TARGET_PRECISION)),
        Target("multi-fault: every injected domain named", f">= {TARGET_BOTH:.0%}", both, at_least(both, TARGET_BOTH), "%"),
        Target(f"multi-fault: a domain not injected named at calibrated confidence >= {CONFIDENT}", "0",
               float(len(confident_wrong)) if multi else None, (not confident_wrong) if multi else None, "count"),
        Target("controls (steady, restart): a fault domain named", "0", named_on_controls,
               None if named_on_controls is None else named_on_controls == 0, "count"),
        Target("traffic surges named traffic", "100%", surge_named, at_least(surge_named, 1.0), "%"),
        Target("expected calibration error of the calibrated confidence", f"<= {TARGET_ECE}", held_out_ece,
               at_most(held_out_ece, TARGET_ECE) if combined else None),
        Target("macro-F1 (abstain = miss) above traces-only", f">= +{TARGET_F1_LEAD * 100:.0f} points", lead,
               at_least(lead, TARGET_F1_LEAD) if combined else None, "points"),
        Target("kernel-only precision, lowest of " + ", ".join(KERNEL_PRECISION_DOMAINS), f">= {TARGET_KERNEL_PRECISION}",
               kernel_p, at_least(kernel_p, TARGET_KERNEL_PRECISION) if combined else None),
    ]


def ranking(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-1 and top-2 accuracy of the engine's ranking over faulted cases, whatever it decided
    (a case counts when an injected domain is among its first k hypotheses), as RCA benchmarks
    report top-k."""
    faulted = [r for r in rows if r["expect"]]

    def top(k: int) -> float | None:
        return _div(sum(1 for r in faulted if set(h["domain"] for h in r.get("hypotheses", [])[:k]) & set(r["expect"])),
                    len(faulted))

    return {"cases": len(faulted), "top1": top(1), "top2": top(2)}


def risk_coverage(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy against the share answered, over faulted cases: answer the cases whose top score
    is highest first; a case is right when its top hypothesis was injected. ``points`` is the
    curve; ``operating`` is where the engine's own decisions put it (answered share, accuracy)."""
    faulted = [r for r in rows if r["expect"] and r.get("hypotheses")]
    order = sorted(faulted, key=lambda r: -r["hypotheses"][0]["score"])
    points, right = [], 0
    for k, r in enumerate(order, 1):
        right += r["hypotheses"][0]["domain"] in r["expect"]
        points.append([round(k / len(order), 4), round(right / k, 4)])
    all_faulted = [r for r in rows if r["expect"]]
    answered = [r for r in all_faulted if r["predicted"]]
    aurc = _mean(1 - acc for _, acc in points)
    return {"cases": len(order), "points": points, "aurc": aurc,
            "operating": [_div(len(answered), len(all_faulted)), _div(sum(1 for r in answered if r["correct"]),
                                                                     len(answered))]}


def aggregate(rows: list[dict[str, Any]], mode: str, traces_only_f1: float | None) -> dict[str, Any]:
    """The scorecard of already-scored case rows (``score_case``); ``traces_only_f1`` is traces-only's
    ``f1_with_abstain`` over all the same cases, for the ablation target."""
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in ("single_fault", "multi_fault", "no_fault")}
    card: dict[str, Any] = {
        "mode": mode,
        "cases": rows,
        "scopes": {**{k: scope_summary(v) for k, v in by_kind.items()}, "all": scope_summary(rows)},
        "confusion": confusion(rows),
        "calibration": calibration(rows),
        "detection": detection(rows),
        "confident_wrong": confident_wrong(rows),
        "overhead": overhead(rows),
        "errors": [{"name": r["name"], "error": r["error"]} for r in rows if r.get("error")],
        "traces_only_f1_with_abstain": traces_only_f1,
    }
    card["ranking"] = ranking(rows)
    return card


def score(cases: list[dict[str, Any]], mode: str = "combined") -> dict[str, Any]:
    """The whole scorecard (what ``scorecard.json`` holds) of ``cases`` under ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    invalid = [{"name": c["name"], "reason": c["invalid"]} for c in cases if c.get("invalid")]
    cases = [c for c in cases if not c.get("invalid")]
    rows = [score_case(c, mode) for c in cases]
    # The ablation targets need the other modes' rows on the same cases: re-attribution is
    # cheap, so every mode's card carries them rather than depending on which modes a run asked for.
    by_mode = {m: rows if m == mode else [score_case(c, m) for c in cases] for m in ("traces-only", "kernel-only")}
    card = aggregate(rows, mode, scope_summary(by_mode["traces-only"])["macro"]["f1_with_abstain"])
    card["invalid"] = invalid
    card["calibrated"] = calibrate_rows(rows, cases)
    held = [r for r in rows if r["part"] == "held-out"]
    held_names = {r["name"] for r in held}
    card["split"] = {"training": len(rows) - len(held), "held_out": len(held),
                     "rule": f"a hash of each scenario's seed; {calibrate.HELD_OUT_SHARE:.0%} of seeds held out"}
    card["held_out"] = {"ranking": ranking(held), "risk_coverage": risk_coverage(held),
                        "scopes": {k: scope_summary([r for r in held if r["kind"] == k])
                                   for k in ("single_fault", "multi_fault", "no_fault")}}
    card["targets"] = [t.to_dict() for t in targets(
        held, mode, [r for r in by_mode["traces-only"] if r["name"] in held_names],
        [r for r in by_mode["kernel-only"] if r["name"] in held_names], card["calibrated"]["held_out_ece"])]
    return card


def _run_label(cases: list[dict[str, Any]]) -> str:
    files = sorted({Path(str(c["scenario_file"])).name for c in cases if c.get("scenario_file")})
    finished = max(((c.get("finished_at") or 0) for c in cases), default=0)
    day = time.strftime("%Y-%m-%d", time.gmtime(finished)) if finished else "unknown date"
    return f"{', '.join(files) or 'lab run'}, run {day}"


def calibrate_rows(rows: list[dict[str, Any]], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the calibration on the training part, give every answered row its calibrated
    ``probability`` (held-out rows from that fit, training rows out of fold), and measure it."""
    training = [r for r in rows if r["part"] == "training"]
    fitted = calibrate.fit(training, source=f"{_run_label(cases)}: training part, "
                                            f"{sum(1 for r in training if r['predicted'])} verdicts")
    oof = calibrate.out_of_fold(training)
    for r in rows:
        if not r["predicted"]:
            r["probability"] = None
        elif r["part"] == "training":
            r["probability"] = None if r["name"] not in oof else round(oof[r["name"]], 4)
        else:
            r["probability"] = None if fitted is None else round(fitted.verdict.probability(r["score"]), 4)
    pairs = {part: [(r["probability"], bool(r["correct"])) for r in rows
                    if r["part"] == part and r["predicted"] and r["probability"] is not None]
             for part in ("training", "held-out")}
    return {"fitted": fitted.to_dict() if fitted else None,
            "training_verdicts": sum(1 for r in training if r["predicted"]),
            "cv_ece": calibrate.ece(pairs["training"]), "cv_n": len(pairs["training"]),
            "held_out_ece": calibrate.ece(pairs["held-out"]), "held_out_n": len(pairs["held-out"]),
            "raw_held_out_ece": calibrate.ece([(r["score"], bool(r["correct"])) for r in rows
                                               if r["part"] == "held-out" and r["predicted"]])}


# --- writing -----------------------------------------------------------------------------------

def _fmt(v: Any, pct: bool = False, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if pct:
        return f"{v:.0%}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _met(m: bool | None) -> str:
    return "not measured" if m is None else "**met**" if m else "**missed**"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _secs(v: float | None) -> str:
    """Seconds as the scorecard prints them: tenths under 10 s (a post within a second of its alert)."""
    return "–" if v is None else f"{v:.1f} s" if v < 10 else f"{v:.0f} s"


def render_markdown(card: dict[str, Any]) -> str:
    scopes, det, cal, ov = card["scopes"], card["detection"], card["calibration"], card["overhead"]
    counts = {k: scopes[k]["cases"] for k in ("single_fault", "multi_fault", "no_fault")}
    out = [f"# Attribution lab scorecard: {card['mode']}", "",
           f"{len(card['cases'])} case(s): {counts['single_fault']} single-fault, {counts['multi_fault']} multi-fault, "
           f"{counts['no_fault']} no-fault. Verdicts re-attributed from the stored evidence in `{card['mode']}` "
           "mode (how cases count: `lab/scorecard.py`).", ""]
    invalid = card.get("invalid") or []
    if invalid:
        out += [f"{len(invalid)} more case(s) not scored: their baseline was not healthy "
                "(the runner's baseline check).", ""]
        out += [f"- {c['name']}: {c['reason']}" for c in invalid] + [""]

    split = card.get("split") or {}
    out += ["## Targets (held-out part)", "",
            f"Judged on the held-out part: {split.get('held_out', '?')} case(s); the calibration is fitted on the "
            f"training part's {split.get('training', '?')} ({split.get('rule', '')}). The ablation targets are "
            "judged in combined mode only.", ""]
    out += _table(["target", "goal", "measured", ""],
                  [[t["name"], t["goal"], Target(**t).shown(), _met(t["met"])] for t in card["targets"]])
    unfelt = [r for r in card["cases"] if r.get("part") == "held-out" and r.get("felt") is False]
    if unfelt:
        named = sum(1 for r in unfelt if r["predicted"] and set(r["predicted"]) <= set(r["expect"]))
        wrong = sum(1 for r in unfelt if r["predicted"] and not set(r["predicted"]) <= set(r["expect"]))
        out += ["", f"{len(unfelt)} held-out faulted case(s) left out of the fault targets: the service's requests "
                f"did not feel the fault (no alert; error ratio and p90 as in the baseline). Their verdicts: "
                f"{named} named the injected domain, {len(unfelt) - named - wrong} abstained, {wrong} named "
                "another: " + ", ".join(r["name"] for r in unfelt) + "."]
    held = card.get("held_out") or {}
    rk, rc = held.get("ranking") or {}, held.get("risk_coverage") or {}
    if rk:
        op = rc.get("operating") or [None, None]
        out += ["", f"Held-out ranking over {rk['cases']} faulted case(s): top-1 {_fmt(rk['top1'], pct=True)}, "
                f"top-2 {_fmt(rk['top2'], pct=True)} (an injected domain among the first k hypotheses, whatever "
                f"the verdict decided). Risk-coverage: answering the most confident cases first, area under the "
                f"risk curve {_fmt(rc.get('aurc'), digits=3)}; the engine's own decisions answer "
                f"{_fmt(op[0], pct=True)} at accuracy {_fmt(op[1], pct=True)}. ![risk-coverage](risk_coverage.png)"]

    out += ["", "## Summary", ""]
    out += _table(["scope", "cases", "abstained", "macro P", "macro R", "macro F1", "macro F1 (abstain = miss)"],
                  [[k.replace("_", "-"), str(s["cases"]), f"{s['abstained']} ({_fmt(s['abstain_rate'], pct=True)})",
                    _fmt(s["macro"]["precision"]), _fmt(s["macro"]["recall"]), _fmt(s["macro"]["f1"]),
                    _fmt(s["macro"]["f1_with_abstain"])] for k, s in scopes.items()])
    out += ["", "Traces-only macro-F1 (all cases, abstain = miss) on the same evidence: "
            f"{_fmt(card.get('traces_only_f1_with_abstain'))}.", ""]

    out += ["## Per domain (single-fault cases; precision and recall over answered cases)", ""]
    out += _table(["domain", "cases", "TP", "FP", "FN", "abstained", "precision", "recall", "F1"],
                  [[d, str(m["support"]), str(m["tp"]), str(m["fp"]), str(m["fn"]), str(m["abstained"]),
                    _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"])]
                   for d, m in scopes["single_fault"]["per_domain"].items()])

    conf = card["confusion"]
    out += ["", "## Confusion matrix (all cases)", "",
            "Rows: injected; columns: named. ![confusion](confusion.png)", ""]
    out += _table(["injected \\ named", *conf["columns"]],
                  [[name, *(str(c) if c else "·" for c in row)] for name, row in zip(conf["rows"], conf["matrix"])])

    cc = card.get("calibrated") or {}
    out += ["", "## Calibration", "",
            f"The engine's raw score: expected calibration error {_fmt(cal['ece'], digits=3)} over {cal['n']} answered "
            "cases (a verdict is correct when every domain it names was injected). ![reliability](reliability.png)",
            "",
            f"Calibrated (isotonic, fitted on {cc.get('training_verdicts', 0)} training verdicts): ECE "
            f"{_fmt(cc.get('cv_ece'), digits=3)} out of fold on the training part ({cc.get('cv_n', 0)} verdicts), "
            f"{_fmt(cc.get('held_out_ece'), digits=3)} on the held-out part ({cc.get('held_out_n', 0)} verdicts; "
            f"the raw score there: {_fmt(cc.get('raw_held_out_ece'), digits=3)}).", ""]
    out += _table(["confidence", "cases", "mean confidence", "precision"],
                  [[f"{b['lo']:.1f}–{b['hi']:.1f}", str(b["n"]), _fmt(b["mean_confidence"]), _fmt(b["precision"])]
                   for b in cal["bins"] if b["n"]])

    out += ["", "## Detection", "",
            f"{det['detected']} of {det['faulted_cases']} faulted cases detected by a real alert "
            f"({_fmt(det['rate'], pct=True)}); from fault onset to the attributed incident: "
            f"p50 {_secs(det['p50_s'])}, p95 {_secs(det['p95_s'])}, max {_secs(det['max_s'])}. "
            f"False alarms on no-fault cases: {det['false_alarms']} of {det['no_fault_cases']}.", ""]
    pre = det.get("preliminary") or {}
    if pre.get("n"):
        out += [f"Preliminary verdicts (at the alert's receipt, from the flight recorder): {pre['n']}; from the "
                f"alert's receipt to the first attributed post p50 {_secs(det['alert_to_first_post_p50_s'])}, p95 "
                f"{_secs(det['alert_to_first_post_p95_s'])}, max {_secs(det['alert_to_first_post_max_s'])}; from "
                f"fault onset to the first attributed post p50 {_secs(det['first_post_p50_s'])}, p95 "
                f"{_secs(det['first_post_p95_s'])}. Changed by the capture: {pre['changed']} "
                f"({_fmt(pre['changed_rate'], pct=True)}): right to wrong {pre['right_to_wrong']}, wrong to right "
                f"{pre['wrong_to_right']}, abstained then named {pre['abstained_then_named']}, named then abstained "
                f"{pre['named_then_abstained']}.", ""]
    ew = det.get("early_warning") or {}
    if ew.get("cases"):
        out += [f"Kernel early warning (the agent's recorder, scored with the attribution model; {ew['cases']} cases "
                f"recorded it): fired for an injected domain in {ew['warned']} of {ew['warnable_faulted']} faulted "
                f"cases whose domain the kernel sees by a cause ({_fmt(ew['rate'], pct=True)}), from fault onset p50 "
                f"{_secs(ew['onset_to_warning_p50_s'])}, p95 {_secs(ew['onset_to_warning_p95_s'])}; before the alert "
                f"in {ew['before_alert']} of {ew['detected_and_warned']} alerted ones "
                f"({_fmt(ew['before_alert_rate'], pct=True)}). Naming a domain not injected: "
                f"{ew['wrong_domain_cases']} faulted cases; on no-fault cases: {ew['on_no_fault_cases']} of "
                f"{ew['no_fault_cases']} ({_fmt(ew['false_per_hour'], digits=1)} per hour over "
                f"{_fmt(ew['no_fault_hours'], digits=2)} h of their fault phases).", ""]
    an = det.get("anomalies") or {}
    if an.get("cases"):
        out += [f"Anomalies (what the workload never did before, flagged by the agent; {an['cases']} cases scored "
                f"them): {an['flagged']} of {an['injected']} injected flagged ({_fmt(an['rate'], pct=True)}); a flag "
                f"on {an['controls_flagged']} of {an['controls']} controls and on {an['flagged_without_injection']} of "
                f"{an['without_injection']} cases that injected none.", ""]
    out += ["## Capture overhead", "",
            f"{ov['captures']} captures: mean BPF CPU {_fmt(ov['mean_bpf_ms'], digits=1)} ms, mean agent CPU "
            f"{_fmt(ov['mean_agent_cpu_s'])} s, mean events {_fmt(ov['mean_events'], digits=0)}, "
            f"lost events {ov['lost_events']}.", ""]
    if card["confident_wrong"]:
        out += ["## Confident wrong verdicts (multi-fault and no-fault)", ""]
        out += [f"- {w['name']}: named {', '.join(w['predicted'])} at {w['confidence']:.2f}, injected "
                f"{', '.join(w['expect']) or 'nothing'}" for w in card["confident_wrong"]]
        out.append("")

    def verdict(r: dict[str, Any]) -> str:
        named = ", ".join(r["predicted"]) or "abstain"
        if r["correct"] is None:
            return named
        return named + (" ✓" if set(r["predicted"]) == set(r["expect"]) else " (partial)" if r["correct"] else " ✗")

    out += ["## Cases", ""]
    out += _table(["case", "injected", "named", "confidence", "detected", "detection", "note"],
                  [[r["name"], ", ".join(r["expect"]) or "—", verdict(r), f"{r['confidence']:.2f}",
                    _fmt(r["detected"]), _secs(r["detection_s"]),
                    (r["error"] or r["abstain_reason"] or "").replace("|", "/")[:120]]
                   for r in card["cases"]])
    return "\n".join(out) + "\n"


def _figure(size: tuple[float, float]):
    # Imported here: matplotlib takes most of a second to import. The object API with the
    # figure's own Agg canvas: no pyplot global state, no process-wide backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def draw_confusion(card: dict[str, Any], path: Path) -> None:
    conf = card["confusion"]
    fig = _figure((9.5, 7))
    ax = fig.subplots()
    data = conf["matrix"]
    peak = max((max(r) for r in data), default=0) or 1
    im = ax.imshow(data, cmap="Blues", vmin=0, vmax=peak, aspect="auto")
    ax.set_xticks(range(len(conf["columns"])), conf["columns"], rotation=40, ha="right", fontsize=9)
    ax.set_yticks(range(len(conf["rows"])), conf["rows"], fontsize=9)
    for i, counts in enumerate(data):
        for j, c in enumerate(counts):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=10,
                        color="white" if c > peak * 0.55 else "#1f2933")
    ax.set_xlabel("named by the verdict")
    ax.set_ylabel("injected")
    ax.set_title(f"Confusion matrix ({card['mode']}, {len(card['cases'])} cases)", loc="left")
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(im, ax=ax, shrink=0.8, label="count").ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


def draw_reliability(card: dict[str, Any], path: Path) -> None:
    cal = card["calibration"]
    fig = _figure((6.5, 6))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="#9aa5b1", lw=1, label="perfect calibration")
    width = 1.0 / len(cal["bins"])
    shown = [b for b in cal["bins"] if b["n"]]
    ax.bar([b["lo"] + width / 2 for b in shown], [b["precision"] for b in shown], width=width * 0.9,
           color="#3e7cb1", alpha=0.85, label="observed precision")
    for b in shown:
        ax.plot([b["lo"] + width / 2], [b["mean_confidence"]], marker="o", color="#c23b22", ms=5)
        ax.text(b["lo"] + width / 2, min(b["precision"] + 0.02, 0.97), f"n={b['n']}", ha="center", fontsize=8)
    ax.plot([], [], marker="o", ls="", color="#c23b22", label="mean confidence in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("verdict confidence")
    ax.set_ylabel("precision (every named domain injected)")
    ece = cal["ece"]
    ax.set_title(f"Reliability ({card['mode']}), ECE {ece:.3f}" if ece is not None
                 else f"Reliability ({card['mode']}): no answered case", loc="left")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


def draw_risk_coverage(card: dict[str, Any], path: Path) -> None:
    """Accuracy against the share answered (held-out faulted cases), and the engine's operating point."""
    rc = (card.get("held_out") or {}).get("risk_coverage") or {}
    fig = _figure((6.5, 5))
    ax = fig.subplots()
    pts = rc.get("points") or []
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#3e7cb1", lw=2, label="answer the top-scored first")
    op = rc.get("operating") or [None, None]
    if op[0] is not None and op[1] is not None:
        ax.plot([op[0]], [op[1]], marker="o", color="#c23b22", ls="", ms=7, label="the engine's decisions")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("share of faulted cases answered (coverage)")
    ax.set_ylabel("accuracy of the top hypothesis")
    ax.set_title(f"Risk-coverage ({card['mode']}, held-out, {rc.get('cases', 0)} cases)", loc="left")
    if pts or op[0] is not None:
        ax.legend(loc="lower left", fontsize=8)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


def write(card: dict[str, Any], out_dir: Path) -> list[Path]:
    """``scorecard.json``, ``scorecard.md`` and the PNG charts (``SCORECARD_FILES``) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in SCORECARD_FILES]
    paths[0].write_text(json.dumps(card, indent=2) + "\n")
    paths[1].write_text(render_markdown(card))
    draw_confusion(card, paths[2])
    draw_reliability(card, paths[3])
    draw_risk_coverage(card, paths[4])
    return paths


def mode_dir(run_dir: Path, mode: str, modes: list[str]) -> Path:
    """Where a mode's scorecard goes: the run directory itself for a single mode (the issue's
    ``DIR/scorecard.json``), ``DIR/<mode>/`` when a run scores several."""
    return Path(run_dir) if len(modes) == 1 else Path(run_dir) / mode


def pooled_cases(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """The cases of several runs together (a corpus run in parts); a case name in two of them is
    an error, since the split and the scorecard key on names."""
    cases: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for d in run_dirs:
        for c in load_cases(Path(d)):
            if c["name"] in seen:
                raise ScorecardError(f"case {c['name']!r} is in both {seen[c['name']]} and {d}")
            seen[c["name"]] = Path(d)
            cases.append(c)
    return cases


def report(run_dirs: list[Path], modes: list[str], out: Path) -> list[dict[str, Any]]:
    """Score the stored cases of ``run_dirs`` (several runs are pooled) in each mode and write
    every scorecard to ``out``."""
    cases = pooled_cases(run_dirs)
    cards = []
    for mode in modes:
        card = score(cases, mode)
        card["runs"] = [str(d) for d in run_dirs]
        write(card, mode_dir(out, mode, modes))
        cards.append(card)
    if len(modes) > 1:
        (Path(out) / "compare.md").write_text(compare_table([(str(out), c) for c in cards]))
    return cards


def calibration_table(run_dirs: list[Path]) -> dict[str, Any]:
    """The responder's calibration (``responder.attribution.calibration``), fitted with the current
    engine on the training part of the runs' cases, combined mode."""
    fitted = score(pooled_cases(run_dirs), "combined")["calibrated"]["fitted"]
    if not fitted:
        raise ScorecardError(f"{', '.join(map(str, run_dirs))}: fewer than {calibrate.MIN_POINTS} answered verdicts "
                             "in the training part to calibrate on")
    return fitted


def stored_modes(run_dir: Path) -> list[str]:
    """The modes a run directory already has scorecards for (``DIR/scorecard.json`` first)."""
    run_dir = Path(run_dir)
    found = []
    top = run_dir / "scorecard.json"
    if top.is_file():
        try:
            found.append(json.loads(top.read_text())["mode"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    found += [m for m in MODES if (run_dir / m / "scorecard.json").is_file() and m not in found]
    return found


# --- comparing ---------------------------------------------------------------------------------

def find_scorecards(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, scorecard) for a scorecard file, or every scorecard in a run directory."""
    path = Path(path)
    candidates = [path / "scorecard.json", *(path / m / "scorecard.json" for m in MODES)]
    files = [path] if path.is_file() else [p for p in candidates if p.is_file()]
    if not files:
        raise ScorecardError(f"{path}: no scorecard.json here (run `llmslo lab report {path}` first)")
    out = []
    for f in files:
        try:
            card = json.loads(f.read_text())
            card["mode"], card["scopes"]  # noqa: B018 - shape check
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ScorecardError(f"{f}: not a lab scorecard ({e})") from None
        out.append((str(f.parent), card))
    return out


COMPARE_COLUMNS = ("source", "mode", "cases", "macro P", "macro R", "macro F1", "F1 abstain=miss", "abstain",
                   "ECE", "detected", "p50 s", "p95 s")


def compare_rows(cards: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for label, c in cards:
        single, allc = c["scopes"]["single_fault"], c["scopes"]["all"]
        det = c["detection"]
        rows.append([label, c["mode"], str(len(c["cases"])), _fmt(single["macro"]["precision"]),
                     _fmt(single["macro"]["recall"]), _fmt(single["macro"]["f1"]),
                     _fmt(allc["macro"]["f1_with_abstain"]), _fmt(single["abstain_rate"], pct=True),
                     _fmt(c["calibration"]["ece"], digits=3), _fmt(det["rate"], pct=True),
                     _fmt(det["p50_s"], digits=0), _fmt(det["p95_s"], digits=0)])
    return rows


def compare_table(cards: list[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table, aligned so it also reads as plain text."""
    rows = [list(COMPARE_COLUMNS)] + compare_rows(cards)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COMPARE_COLUMNS))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]]
    note = ("\nmacro P/R/F1 and abstain: single-fault cases, P/R over answered cases; F1 abstain=miss: all cases, "
            "an abstention counts as a miss; detected: faulted cases raised by a real alert.\n")
    return "\n".join(out) + "\n" + note
