"""Settings: one place, defaults that run on one machine, a YAML file, then ``LLMSLO_*`` variables.

Precedence: environment > file > defaults. Validated at start-up; every error names its key.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the key."""


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path("data"))
    # The incident store: SQLite in data_dir (one replica) unless this names a PostgreSQL
    # database (postgresql://user:password@host:port/dbname), which two or more replicas share.
    database_url: str | None = None
    # Alertmanager's http_config: a bearer token, or basic auth. Also guards the read API.
    webhook_token: str | None = None
    webhook_user: str | None = None
    webhook_password: str | None = None
    # A 10,000-alert notification is about 4 MB; Alertmanager drops a notification refused with a 4xx.
    max_body_bytes: int = 16 * 1024 * 1024
    workers: int = 2
    max_pending_jobs: int = 1000
    # Where the incident page lives as seen by people following a chat link.
    public_url: str | None = None
    playbooks_dir: Path = field(default_factory=lambda: REPO_ROOT / "playbooks")
    # Capture agent: in-process (None) or a remote `llmslo agent` URL.
    agent_url: str | None = None
    agent_token: str | None = None
    node_name: str | None = None
    # On Kubernetes ("kubernetes"): the agent DaemonSet's pods, found through the API, one per
    # node, at the container port named "api" (else agent_port); alerts name pods and workloads.
    agent_discovery: str = "static"
    agent_namespace: str = "llmslo"
    agent_selector: str = "app.kubernetes.io/name=llmslo-agent"
    agent_port: int = 8081
    # The Kubernetes API: an explicit URL (+ bearer token, CA file), a kubeconfig file, or, when
    # none is set, the pod's service account.
    kube_api_url: str | None = None
    kube_token: str | None = None
    kube_ca_file: str | None = None
    kubeconfig: str | None = None
    recorder_interval_s: float = 5.0
    recorder_history_s: float = 900.0
    # Chat.
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_channel: str = "#llm-incidents"
    slack_api_url: str = "https://slack.com/api/"
    # Routing: an alert label naming the channel (overrides the playbook's), and one naming who
    # to mention on the root (a user group S…, a user U…/W…, or here/channel).
    slack_channel_label: str = "slack_channel"
    slack_mention_label: str = "slack_mention"
    # Metrics: Prometheus to query (evidence) and, when people reach it elsewhere, the base URL
    # for graph links; an optional Grafana Explore link template ({expr}, {start_ms}, {end_ms}).
    prometheus_url: str | None = None
    prometheus_public_url: str | None = None
    prometheus_timeout_s: float = 10.0
    prometheus_attempts: int = 3
    grafana_explore_url_template: str | None = None
    # Traces: the built-in OTLP receiver's store, or a Tempo / Jaeger query API.
    trace_backend: str = "builtin"
    tempo_url: str | None = None
    jaeger_url: str | None = None
    # Link for one trace ({trace_id}); by default the built-in store's own JSON, or Jaeger's UI.
    trace_url_template: str | None = None
    span_store_max_spans: int = 200_000
    span_store_max_bytes: int = 256 * 1024 * 1024
    otlp_max_body_bytes: int = 8 * 1024 * 1024
    # The lab's reliability table (a scorecard.json): the precision observed at each confidence.
    calibration_file: Path | None = field(
        default_factory=lambda: Path(__file__).resolve().parent / "attribution" / "calibration.json")
    generated_token: bool = False  # True when webhook_token was generated at start

    @property
    def store_path(self) -> Path:
        return self.data_dir / "incidents.sqlite3"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


_ENV = {
    "LLMSLO_WEBHOOK_TOKEN": "webhook_token",
    "LLMSLO_WEBHOOK_USER": "webhook_user",
    "LLMSLO_WEBHOOK_PASSWORD": "webhook_password",
    "LLMSLO_DATA_DIR": "data_dir",
    "LLMSLO_DATABASE_URL": "database_url",
    "LLMSLO_AGENT_TOKEN": "agent_token",
    "LLMSLO_AGENT_URL": "agent_url",
    "LLMSLO_AGENT_DISCOVERY": "agent_discovery",
    "LLMSLO_AGENT_NAMESPACE": "agent_namespace",
    "LLMSLO_AGENT_SELECTOR": "agent_selector",
    "LLMSLO_AGENT_PORT": "agent_port",
    "LLMSLO_KUBE_API_URL": "kube_api_url",
    "LLMSLO_KUBE_TOKEN": "kube_token",
    "LLMSLO_KUBE_CA_FILE": "kube_ca_file",
    "LLMSLO_KUBECONFIG": "kubeconfig",
    "LLMSLO_SLACK_BOT_TOKEN": "slack_bot_token",
    "LLMSLO_SLACK_SIGNING_SECRET": "slack_signing_secret",
    "LLMSLO_SLACK_APP_TOKEN": "slack_app_token",
    "LLMSLO_SLACK_CHANNEL": "slack_channel",
    "LLMSLO_SLACK_API_URL": "slack_api_url",
    "LLMSLO_SLACK_CHANNEL_LABEL": "slack_channel_label",
    "LLMSLO_SLACK_MENTION_LABEL": "slack_mention_label",
    "LLMSLO_PROMETHEUS_URL": "prometheus_url",
    "LLMSLO_PROMETHEUS_PUBLIC_URL": "prometheus_public_url",
    "LLMSLO_PROMETHEUS_TIMEOUT_S": "prometheus_timeout_s",
    "LLMSLO_PROMETHEUS_ATTEMPTS": "prometheus_attempts",
    "LLMSLO_GRAFANA_EXPLORE_URL_TEMPLATE": "grafana_explore_url_template",
    "LLMSLO_TRACE_BACKEND": "trace_backend",
    "LLMSLO_TEMPO_URL": "tempo_url",
    "LLMSLO_JAEGER_URL": "jaeger_url",
    "LLMSLO_TRACE_URL_TEMPLATE": "trace_url_template",
    "LLMSLO_SPAN_STORE_MAX_SPANS": "span_store_max_spans",
    "LLMSLO_SPAN_STORE_MAX_BYTES": "span_store_max_bytes",
    "LLMSLO_OTLP_MAX_BODY_BYTES": "otlp_max_body_bytes",
    "LLMSLO_CALIBRATION_FILE": "calibration_file",
    "LLMSLO_PLAYBOOKS_DIR": "playbooks_dir",
    "LLMSLO_PUBLIC_URL": "public_url",
    "LLMSLO_MAX_BODY_BYTES": "max_body_bytes",
    "LLMSLO_RECORDER_INTERVAL_S": "recorder_interval_s",
    "LLMSLO_RECORDER_HISTORY_S": "recorder_history_s",
}


# Settings that are credentials. From a file they must be YAML strings: an unquoted 0777 is the
# octal number 511 to YAML, and a token silently turned into "511" would lock everyone out.
SECRETS = frozenset({"webhook_token", "webhook_user", "webhook_password", "agent_token", "kube_token",
                     "slack_bot_token", "slack_signing_secret", "slack_app_token", "database_url"})


def _check_file_value(key: str, value: Any, ftype: Any) -> None:
    """A value from the YAML file has the type its setting takes: scalars only, and strings
    (quoted when they look like numbers) for text settings and every secret."""
    if value is None:
        return
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{key}: expected a single value, got a YAML {'list' if isinstance(value, list) else 'mapping'}")
    t = str(ftype)
    text_setting = not any(t.startswith(p) for p in ("int", "float", "bool"))
    if (key in SECRETS or text_setting) and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string; YAML read this as {type(value).__name__} "
                          f"{repr(value)[:40]}: put it in quotes")


def _coerce(key: str, value: Any, default: Any, ftype: Any) -> Any:
    t = str(ftype)
    try:
        if "Path" in t:
            return Path(str(value))
        if t.startswith("int"):
            # int(2.5) would silently truncate a YAML float; only whole numbers are integers.
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t.startswith("float"):
            return float(value)
        if t.startswith("bool"):
            return str(value).lower() in ("1", "true", "yes", "on")
        return None if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {t.split(' ')[0]}, got {value!r}") from None


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    environ = os.environ if env is None else env
    s = Settings()
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path}: not valid YAML: {' '.join(str(e).split())}") from None
        except RecursionError:
            raise ConfigError(f"config file {path}: not valid YAML: nested too deeply") from None
        except ValueError as e:  # an integer of more than 4,300 digits
            raise ConfigError(f"config file {path}: a value cannot be read: {str(e).split(';')[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping of settings")
        for k, v in data.items():
            if not isinstance(k, str) or k not in known or k == "generated_token":
                raise ConfigError(f"{str(k)[:80]}: unknown setting; known: "
                                  f"{', '.join(sorted(set(known) - {'generated_token'}))}")
            _check_file_value(k, v, known[k].type)
            values[k] = v
    for var, key in _ENV.items():
        if environ.get(var):
            values[key] = environ[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    for k, v in values.items():
        setattr(s, k, _coerce(k, v, getattr(s, k), known[k].type))
    validate(s)
    return s


def validate(s: Settings) -> None:
    if not 0 < s.port < 65536:
        raise ConfigError(f"port: {s.port} is not a TCP port")
    if s.max_body_bytes < 1024:
        raise ConfigError("max_body_bytes: must be at least 1024")
    if not 1 <= s.workers <= 64:
        raise ConfigError("workers: must be between 1 and 64")
    if bool(s.webhook_user) != bool(s.webhook_password):
        raise ConfigError("webhook_user/webhook_password: set both for basic auth, or neither")
    for key in ("agent_url", "slack_api_url", "prometheus_url", "prometheus_public_url", "public_url", "tempo_url",
                "jaeger_url"):
        v = getattr(s, key)
        if v and urlparse(v).scheme not in ("http", "https"):
            raise ConfigError(f"{key}: {v!r} is not an http(s) URL")
    if s.database_url and urlparse(s.database_url).scheme not in ("postgresql", "postgres"):
        # The value may hold a password: name the scheme, not the URL.
        raise ConfigError(f"database_url: expected postgresql://user:password@host:port/dbname, got a "
                          f"{urlparse(s.database_url).scheme or 'scheme-less'} URL")
    if s.agent_url and not s.agent_token:
        raise ConfigError("agent_token: required when agent_url names a remote agent")
    if s.agent_discovery not in ("static", "kubernetes"):
        raise ConfigError(f"agent_discovery: {s.agent_discovery!r}; expected static or kubernetes")
    if s.agent_discovery == "kubernetes":
        if s.agent_url:
            raise ConfigError("agent_url: not used with agent_discovery kubernetes (agents are found per node)")
        if not s.agent_token:
            raise ConfigError("agent_token: required with agent_discovery kubernetes")
        try:
            from responder.kube.cluster import parse_selector

            if not parse_selector(s.agent_selector):
                raise ValueError("agent selector: empty")
        except ValueError as e:
            raise ConfigError(f"agent_selector: {e}") from None
    if not 0 < s.agent_port < 65536:
        raise ConfigError(f"agent_port: {s.agent_port} is not a TCP port")
    if s.kube_api_url and urlparse(s.kube_api_url).scheme not in ("http", "https"):
        raise ConfigError(f"kube_api_url: {s.kube_api_url!r} is not an http(s) URL")
    if not s.playbooks_dir.is_dir():
        raise ConfigError(f"playbooks_dir: {s.playbooks_dir} is not a directory")
    if s.recorder_interval_s <= 0:
        raise ConfigError("recorder_interval_s: must be positive")
    if not s.recorder_interval_s <= s.recorder_history_s <= 86_400:
        raise ConfigError("recorder_history_s: must be at least one interval and at most a day")
    if not 0 < s.prometheus_timeout_s <= 300:
        raise ConfigError("prometheus_timeout_s: must be between 0 and 300 seconds")
    if not 1 <= s.prometheus_attempts <= 10:
        raise ConfigError("prometheus_attempts: must be between 1 and 10")
    if s.trace_backend not in ("builtin", "tempo", "jaeger"):
        raise ConfigError(f"trace_backend: {s.trace_backend!r}; expected builtin, tempo or jaeger")
    if s.trace_backend != "builtin" and not getattr(s, f"{s.trace_backend}_url"):
        raise ConfigError(f"{s.trace_backend}_url: required when trace_backend is {s.trace_backend}")
    for key, needed in (("trace_url_template", "{trace_id}"), ("grafana_explore_url_template", "{expr}")):
        v = getattr(s, key)
        if v and (needed not in v or urlparse(v.replace("{", "").replace("}", "")).scheme not in ("http", "https")):
            raise ConfigError(f"{key}: {v!r} must be an http(s) URL containing {needed}")
    if not 1_000 <= s.span_store_max_spans <= 50_000_000:
        raise ConfigError("span_store_max_spans: must be between 1000 and 50000000")
    if not 1 << 20 <= s.span_store_max_bytes <= 64 << 30:
        raise ConfigError("span_store_max_bytes: must be between 1 MiB and 64 GiB")
    if not 1024 <= s.otlp_max_body_bytes <= 256 << 20:
        raise ConfigError("otlp_max_body_bytes: must be between 1 KiB and 256 MiB")


def ensure_webhook_token(s: Settings) -> None:
    """With no credentials configured, generate a token (printed at start) rather than run open."""
    if not s.webhook_token and not s.webhook_user:
        s.webhook_token = secrets.token_urlsafe(24)
        s.generated_token = True
