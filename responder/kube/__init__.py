"""Kubernetes for the responder: which pods an alert is about, where they run, their agents."""
