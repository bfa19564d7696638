"""What the capture agent and the responder both serve or parse: HTTP helpers, timestamps, ports."""
