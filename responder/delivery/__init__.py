"""Delivery: the outbox's messages sent to their chat sinks, exactly once, in thread order."""
