"""Real Prometheus and Alertmanager processes (and a metrics endpoint) for tests: the launchers
live in ``lab.servers``, which the lab stack uses too; this module keeps the names tests import."""
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


@contextmanager
def scraping(directory: Path, traffic: Any) -> Iterator[PrometheusProcess]:
    """Serve ``traffic.registry`` and a Prometheus that scrapes it and evaluates CONTRACT_RULES
    every second; start the traffic (``traffic.start()``) and yield once the first scrape landed.
    Stops the traffic, Prometheus and the endpoint however the block ends."""
    metrics_url, stop_metrics = serve_metrics(traffic.registry)
    prom = start_prometheus(
        directory,
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: lab\n    static_configs: [{{targets: ['{urlsplit(metrics_url).netloc}']}}]\n",
        {"slo.yml": CONTRACT_RULES})
    try:
        traffic.start()
        wait_for(lambda: prom.query("llm_requests_total"), 20, what="first scrape")
        yield prom
    finally:
        traffic.stop()
        prom.stop()
        stop_metrics()
