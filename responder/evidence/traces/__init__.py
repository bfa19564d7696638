"""Traces: the OTLP/HTTP span receiver, the bounded built-in span store, the Tempo and Jaeger
query back-ends behind one interface, and trace evidence (per dependency, incident vs baseline)."""
