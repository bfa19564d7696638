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

from common.docgen import markers, replace_between, rewrite

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the key."""


def setting(default: Any = None, *, factory: Any = None, doc: str, shown: str, env: str | None = None) -> Any:
    """A setting's field with what docs/configuration.md says of it: ``doc`` (what it means, in
    Markdown), ``shown`` (its default in words) and ``env`` (how to set it, when not by a variable
    in ``_ENV`` nor only in the file)."""
    meta = {"doc": doc, "shown": shown, "env": env}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    host: str = setting("127.0.0.1", doc="address to listen on", shown="`127.0.0.1`", env="(`llmslo serve --host`)")
    port: int = setting(8080, doc="port to listen on", shown="8080", env="(`llmslo serve --port`)")
    data_dir: Path = setting(
        factory=lambda: Path("data"), shown="`data` (relative to the working directory)",
        doc="the SQLite incident store (`incidents.sqlite3`), `reports.jsonl` and chart files; must be writable at "
            "start")
    # The incident store: SQLite in data_dir (one replica) unless this names a PostgreSQL
    # database (postgresql://user:password@host:port/dbname), which two or more replicas share.
    database_url: str | None = setting(
        None, shown="unset (SQLite in the data directory)",
        doc="`postgresql://USER:PASSWORD@HOST:5432/DB`: the incident store in PostgreSQL, shared by several replicas")
    # Alertmanager's http_config: a bearer token, or basic auth. Also guards the read API.
    webhook_token: str | None = setting(
        None, shown="generated at start and printed",
        doc="bearer token Alertmanager sends; also guards the read API, OTLP and the incident page")
    webhook_user: str | None = setting(
        None, shown="unset",
        doc="basic auth's user, instead of or besides the token; set both or neither")
    webhook_password: str | None = setting(
        None, shown="unset",
        doc="basic auth's password")
    # A 10,000-alert notification is about 4 MB; Alertmanager drops a notification refused with a 4xx.
    max_body_bytes: int = setting(
        16 * 1024 * 1024, shown="16 MiB",
        doc="webhook body limit (a 10,000-alert notification is about 4 MB); at least 1024")
    workers: int = setting(2, doc="workers that investigate incidents; 1 to 64", shown="2", env="(file only)")
    max_pending_jobs: int = setting(
        1000, shown="1000", env="(file only)",
        doc="jobs waiting for a worker beyond which the webhook answers 503 \"too many incidents waiting\"")
    # Where the incident page lives as seen by people following a chat link.
    public_url: str | None = setting(None, doc="base URL of incident links in chat", shown="`http://HOST:PORT`")
    playbooks_dir: Path = setting(
        factory=lambda: REPO_ROOT / "playbooks", shown="`playbooks/` in the repository",
        doc="the playbooks; every file must load at start")
    # Capture agent: in-process (None) or a remote `llmslo agent` URL.
    agent_url: str | None = setting(
        None, shown="in-process",
        doc="use a remote `llmslo agent` instead of the in-process one")
    agent_token: str | None = setting(
        None, shown="unset",
        doc="the bearer token of the agents; required with `agent_url` and with `agent_discovery: kubernetes`")
    node_name: str | None = setting(
        None, shown="the host name", env="(file only)",
        doc="the in-process agent's node name in reports")
    # On Kubernetes ("kubernetes"): the agent DaemonSet's pods, found through the API, one per
    # node, at the container port named "api" (else agent_port); alerts name pods and workloads.
    agent_discovery: str = setting(
        "static", shown="`static`",
        doc="`kubernetes`: find the agent on each target node through the API (needs `LLMSLO_AGENT_TOKEN`, the same "
            "token on every agent; `agent_url` must be unset); `static`: one agent")
    agent_namespace: str = setting(
        "llmslo", shown="`llmslo`",
        doc="the namespace of the agent DaemonSet's pods")
    agent_selector: str = setting(
        "app.kubernetes.io/name=llmslo-agent", shown="`app.kubernetes.io/name=llmslo-agent`",
        doc="the labels of the agent DaemonSet's pods (`key=value,...`)")
    agent_port: int = setting(8081, doc="the agents' port when their pod names no container port `api`", shown="8081")
    # The Kubernetes API: an explicit URL (+ bearer token, CA file), a kubeconfig file, or, when
    # none is set, the pod's service account.
    kube_api_url: str | None = setting(
        None, shown="the pod's service account",
        doc="the responder's Kubernetes API (get/list/watch pods, services, replicasets, jobs), used with "
            "`agent_discovery: kubernetes`")
    kube_token: str | None = setting(
        None, shown="the pod's service account",
        doc="the bearer token for `kube_api_url`")
    kube_ca_file: str | None = setting(
        None, shown="the system's CAs",
        doc="the CA bundle that signed `kube_api_url`'s certificate")
    kubeconfig: str | None = setting(
        None, shown="unset",
        doc="a kubeconfig file for the responder's Kubernetes API, when no API URL is set")
    preliminary_verdict: bool = setting(
        True, shown="true",
        doc="post a verdict from the agents' flight recorders, traces and Prometheus as soon as an alert arrives, "
            "marked preliminary, and update it in place when the capture's verdict is in")
    recorder_interval_s: float = setting(5.0, doc="the in-process agent's flight recorder sampling interval", shown="5")
    recorder_history_s: float = setting(
        900.0, shown="900",
        doc="how far back that recorder reaches; at least one interval, at most a day")
    agent_early_warning_cgroups: str = setting(
        "", shown="unset (pods and containers only)",
        doc="the in-process agent's kernel early warning scores pods and containers; on a plain host, also the "
            "cgroups whose paths match these comma-separated shell patterns, e.g. /system.slice/*.service")
    # Chat.
    slack_bot_token: str | None = setting(None, doc="enables the Slack sink", shown="unset (console sink only)")
    slack_signing_secret: str | None = setting(
        None, shown="unset (no app)",
        doc="with the bot token: the Slack app at `/slack/events` (commands, buttons, mentions)")
    slack_app_token: str | None = setting(None, doc="an app-level token (`xapp-`): also listen over Socket Mode", shown="unset")
    slack_channel: str = setting(
        "#llm-incidents", shown="`#llm-incidents`",
        doc="default channel for incident threads (a playbook's `channel` overrides it)")
    slack_api_url: str = setting(
        "https://slack.com/api/", shown="`https://slack.com/api/`",
        doc="Slack Web API base URL (a proxy or stand-in)")
    # Routing: an alert label naming the channel (overrides the playbook's), and one naming who
    # to mention on the root (a user group S…, a user U…/W…, or here/channel).
    slack_channel_label: str = setting(
        "slack_channel", shown="`slack_channel`",
        doc="alert label whose value overrides the channel")
    slack_mention_label: str = setting(
        "slack_mention", shown="`slack_mention`",
        doc="alert label naming who to mention on the root: a user group `S…`, a user `U…` or `W…`, `here` or "
            "`channel`")
    # Metrics: Prometheus to query (evidence) and, when people reach it elsewhere, the base URL
    # for graph links; an optional Grafana Explore link template ({expr}, {start_ms}, {end_ms}).
    prometheus_url: str | None = setting(None, doc="Prometheus to query for evidence", shown="unset (no metric evidence)")
    prometheus_public_url: str | None = setting(
        None, shown="`prometheus_url`",
        doc="Prometheus base URL in links, when people reach it elsewhere")
    prometheus_timeout_s: float = setting(10.0, doc="per-request timeout, up to 300 s", shown="10")
    prometheus_attempts: int = setting(3, doc="attempts per query (1 to 10)", shown="3")
    grafana_explore_url_template: str | None = setting(
        None, shown="unset",
        doc="Grafana Explore link; must contain `{expr}` (also `{start_ms}`, `{end_ms}`)")
    # Traces: the built-in OTLP receiver's store, or a Tempo / Jaeger query API.
    trace_backend: str = setting("builtin", doc="`builtin`, `tempo` or `jaeger`", shown="`builtin`")
    tempo_url: str | None = setting(None, doc="Tempo's query API; required with `trace_backend: tempo`", shown="unset")
    jaeger_url: str | None = setting(None, doc="Jaeger's query API; required with `trace_backend: jaeger`", shown="unset")
    # Link for one trace ({trace_id}); by default the built-in store's own JSON, or Jaeger's UI.
    trace_url_template: str | None = setting(
        None, shown="built-in: `/api/traces/{id}`; Jaeger: `/trace/{id}`; Tempo: none",
        doc="link for one trace; must contain `{trace_id}`")
    span_store_max_spans: int = setting(
        200_000, shown="200,000",
        doc="spans the built-in span store keeps (1,000 to 50,000,000)")
    span_store_max_bytes: int = setting(
        256 * 1024 * 1024, shown="256 MiB",
        doc="bytes the built-in span store keeps (1 MiB to 64 GiB)")
    otlp_max_body_bytes: int = setting(8 * 1024 * 1024, doc="OTLP request limit, after gzip (1 KiB to 256 MiB)", shown="8 MiB")
    # The lab's reliability table (a scorecard.json): the precision observed at each confidence.
    calibration_file: Path | None = setting(
        factory=lambda: Path(__file__).resolve().parent / "attribution" / "calibration.json",
        shown="`responder/attribution/calibration.json`",
        doc="the lab's calibration (`llmslo lab calibrate`): turns the engine's score into the confidence "
            "reports show, with its support; without one, reports show the uncalibrated score")
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
    "LLMSLO_AGENT_EARLY_WARNING_CGROUPS": "agent_early_warning_cgroups",
    "LLMSLO_RECORDER_HISTORY_S": "recorder_history_s",
    "LLMSLO_PRELIMINARY_VERDICT": "preliminary_verdict",
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


def markdown() -> str:
    """The table of settings docs/configuration.md shows, generated from the fields."""
    env_of = {key: var for var, key in _ENV.items()}
    rows = ["| key | environment variable | meaning | default |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        if "doc" not in f.metadata:
            continue  # state, not a setting
        env = f.metadata["env"] or (f"`{env_of[f.name]}`" if f.name in env_of else "(file only)")
        rows.append(f"| `{f.name}` | {env} | {f.metadata['doc']} | {f.metadata['shown']} |")
    return "\n".join(rows) + "\n"


BEGIN, END = markers("python -m responder.config", "settings table")


def render_doc(text: str) -> str:
    """``text`` (docs/configuration.md) with the settings table between its markers replaced by today's."""
    return replace_between(text, BEGIN, END, markdown(), "docs/configuration.md")


def ensure_webhook_token(s: Settings) -> None:
    """With no credentials configured, generate a token (printed at start) rather than run open."""
    if not s.webhook_token and not s.webhook_user:
        s.webhook_token = secrets.token_urlsafe(24)
        s.generated_token = True


if __name__ == "__main__":  # rewrite the table in docs/configuration.md
    rewrite(REPO_ROOT / "docs" / "configuration.md", render_doc)
