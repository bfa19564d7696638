"""The responder's domain types: the evidence it gathers and ad hoc capture requests (verdicts
and their evidence are the attribution model's, ``capture.attribution.verdict``)."""
