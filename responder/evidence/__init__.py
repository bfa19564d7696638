"""Evidence the gather stage reads besides the kernel capture: Prometheus and traces."""
