"""The attribution model: the rules (one row per signal), the verdict types and how signals
combine into a verdict. It lives beside the probes it reads because the agent runs it too (its
early warning scores each workload's flight-recorder history with it); the responder adds the
trace evidence and the lab's calibration (``responder.attribution``)."""
