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
