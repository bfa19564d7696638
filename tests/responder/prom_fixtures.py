"""Real Prometheus and Alertmanager processes (and a metrics endpoint) for tests: the launchers
live in ``lab.servers``, which the lab stack uses too; this module keeps the names tests import."""
from lab.servers import (  # noqa: F401 - re-exported
    ALERTMANAGER_BIN,
    PROMETHEUS_BIN,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    AlertmanagerProcess,
    PrometheusProcess,
    ServerProcess,
    ServerStartError,
    http_get_json,
    serve_metrics,
    start_alertmanager,
    start_prometheus,
    wait_for,
)

# The contract's rule names with their ranges scaled down to 4s, so seconds of traffic show a burn.
CONTRACT_RULES = """\
groups:
  - name: llm-slo-test
    interval: 1s
    rules:
""" + "".join(f"""\
      - record: llm_slo:errors:ratio_rate{w}
        expr: >-
          sum by (service) (rate(llm_requests_total{{code=~"5..|429"}}[4s]))
          / sum by (service) (rate(llm_requests_total[4s]))
      - record: llm_slo:errors:burn_rate{w}
        expr: llm_slo:errors:ratio_rate{w} / (1 - 0.99)
      - record: llm_slo:ttft:ratio_rate{w}
        expr: >-
          1 - sum by (service) (rate(llm_time_to_first_token_seconds_bucket{{le="0.5"}}[4s]))
          / sum by (service) (rate(llm_time_to_first_token_seconds_count[4s]))
      - record: llm_slo:ttft:burn_rate{w}
        expr: llm_slo:ttft:ratio_rate{w} / (1 - 0.99)
""" for w in ("5m", "1h"))
