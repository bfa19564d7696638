"""The SLOs' Prometheus rules (``llmslo rules generate``)."""
