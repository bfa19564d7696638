"""The responder's domain types shared by its stages: evidence, hypotheses, verdicts, incidents.

One schema per wire format: these ``to_dict`` shapes are what ``GET /api/incidents/{id}`` returns
and what the store persists.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The classes of the confusion matrix (docs/attribution.md, "Fault domains").
DOMAINS = (
    "provider_throttling",
    "provider_latency",
    "network",
    "dns",
    "retrieval_backend",
    "app_cpu",
    "app_memory",
    "policy_layer",
    "traffic",  # demand rose: no fault, the service had more to do (it may need capacity, not a fix)
)


@dataclass
class Evidence:
    """One measured signal, baseline vs incident, and what it says."""

    signal: str  # e.g. "tcp_retrans.retransmits_per_s"
    summary: str  # a sentence a responder can read
    baseline: float | None
    incident: float | None
    unit: str = ""
    source: str = "kernel"  # kernel | trace | metric
    link: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evidence:
        return cls(**d)


@dataclass
class Hypothesis:
    domain: str
    confidence: float
    supporting: list[Evidence] = field(default_factory=list)
    contradicting: list[Evidence] = field(default_factory=list)
    # How the score was reached, in one line: each signal's strength, what explained
    # symptoms kept, the sum and the formula ("" for a verdict stored before this was kept).
    arithmetic: str = ""
    # The engine's score, once ``confidence`` holds the calibrated probability
    # (responder.attribution.calibration); None: ``confidence`` is still the score.
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "confidence": round(self.confidence, 3),
                "score": None if self.score is None else round(self.score, 3),
                "supporting": [e.to_dict() for e in self.supporting],
                "contradicting": [e.to_dict() for e in self.contradicting], "arithmetic": self.arithmetic}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hypothesis:
        return cls(domain=d["domain"], confidence=float(d["confidence"]),
                   supporting=[Evidence.from_dict(e) for e in d.get("supporting", [])],
                   contradicting=[Evidence.from_dict(e) for e in d.get("contradicting", [])],
                   arithmetic=str(d.get("arithmetic") or ""),
                   score=None if d.get("score") is None else float(d["score"]))


@dataclass
class Verdict:
    """Ranked hypotheses; ``domains == []`` means the toolkit abstained (see ``abstain_reason``).

    ``confidence`` is the calibrated probability that the named domains are right once a lab
    calibration was applied (``score`` then keeps the engine's score); before that, or without a
    calibration, it is the engine's score and ``score`` is None."""

    domains: list[str]
    confidence: float
    hypotheses: list[Hypothesis] = field(default_factory=list)
    abstain_reason: str | None = None
    # The support of a calibrated confidence: "41 of 50 lab verdicts at this level were right"
    # (responder.attribution.calibration).
    calibration: str | None = None
    # Which decision rule named the domains or abstained, with its numbers.
    decision: str = ""
    score: float | None = None

    @property
    def calibrated(self) -> bool:
        return self.score is not None

    @property
    def abstained(self) -> bool:
        return not self.domains

    def to_dict(self) -> dict[str, Any]:
        return {"domains": list(self.domains), "confidence": round(self.confidence, 3),
                "hypotheses": [h.to_dict() for h in self.hypotheses], "abstain_reason": self.abstain_reason,
                "calibration": self.calibration, "decision": self.decision,
                "score": None if self.score is None else round(self.score, 3)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(domains=list(d["domains"]), confidence=float(d["confidence"]),
                   hypotheses=[Hypothesis.from_dict(h) for h in d.get("hypotheses", [])],
                   abstain_reason=d.get("abstain_reason"), calibration=d.get("calibration"),
                   decision=str(d.get("decision") or ""),
                   score=None if d.get("score") is None else float(d["score"]))
