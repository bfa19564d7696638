"""The responder's domain types: verdicts and their evidence, and ad hoc capture requests."""
