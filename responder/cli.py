"""``llmslo``: the command line. Every command validates its arguments and exits 2 with a
message (never a traceback) on a user's mistake."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
from importlib import metadata
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2


class CliError(Exception):
    """A user mistake: printed as ``llmslo: <message>``, exit 2."""


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")


# --- serve -------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from common import http as http_server
    from responder import config
    from responder.app import Responder

    try:
        settings = config.load(args.config, host=args.host, port=args.port)
    except config.ConfigError as e:
        raise CliError(f"configuration: {e}") from None
    config.ensure_webhook_token(settings)
    _logging(args.verbose)
    try:
        responder = Responder.build(settings)
    except config.ConfigError as e:  # e.g. the database named by LLMSLO_DATABASE_URL cannot be reached
        raise CliError(f"configuration: {e}") from None
    if settings.generated_token:
        print(f"llmslo: no LLMSLO_WEBHOOK_TOKEN set; generated webhook token for this run: "
              f"{settings.webhook_token}", file=sys.stderr, flush=True)
    print(f"llmslo: responder on http://{settings.host}:{settings.port} (data in {settings.data_dir})",
          file=sys.stderr, flush=True)
    http_server.run(responder.app(), settings.host, settings.port)
    return 0


# --- agent -------------------------------------------------------------------------------------
def cmd_agent(args: argparse.Namespace) -> int:
    from capture.agent import CaptureAgent
    from capture.api import make_app
    from common import http as http_server

    token = os.environ.get("LLMSLO_AGENT_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"llmslo: no LLMSLO_AGENT_TOKEN set; generated agent token for this run: {token}",
              file=sys.stderr, flush=True)
    _logging(args.verbose)
    from capture import kube

    try:
        kube_identity = kube.from_env(args.node_name)
    except Exception as e:  # a broken kubeconfig or service account: say which, do not start half-configured
        raise CliError(f"agent: Kubernetes API configuration: {e}") from None
    agent = CaptureAgent(args.node_name, recorder=not args.no_recorder, recorder_interval_s=args.recorder_interval_s,
                         recorder_history_s=args.recorder_history_s, kube=kube_identity,
                         early_warning=not args.no_early_warning, early_warning_cgroups=tuple(args.early_warning_cgroup))
    if agent.kernel_headers:
        print(f"llmslo agent: {agent.kernel_headers}", file=sys.stderr, flush=True)
    http_server.run(make_app(agent, token), args.host, args.port)
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 0 < len(text) <= 12 or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text[:40]!r}")
    return int(text)


def _dead_retry(args: argparse.Namespace) -> int:
    if args.all == (args.what is not None):
        raise CliError("dead retry: name one (message ID or job ID), or --all")
    if args.what is not None and args.id is None:
        raise CliError(f"dead retry: {args.what} needs an id (see llmslo dead list)")
    return cmd_dead(args)


# --- capture -----------------------------------------------------------------------------------
def _format_capture(result) -> str:
    lines = [f"capture {result.id} on {result.node}: {result.target.describe()} "
             f"for {result.ended_at - result.started_at:.1f}s"]
    for name, r in result.incident.items():
        if r.error:
            lines.append(f"  {name}: FAILED {r.error}")
            continue
        parts = [f"{k}={v:g}" for k, v in r.counters.items()]
        for hname, h in r.histograms.items():
            if h.count:
                parts.append(f"{hname}: n={h.count} p50<={h.quantile(0.5):g}{h.unit} p99<={h.quantile(0.99):g}{h.unit}")
            else:
                parts.append(f"{hname}: no samples")
        for tname, top in r.top.items():
            if top:
                parts.append(f"{tname}: " + ", ".join(f"{t['peer']}×{t['count']}" for t in top[:3]))
        extra = f" [truncated: {r.truncated}]" if r.truncated else ""
        lines.append(f"  {name}: " + "; ".join(parts) + extra)
    for e in result.errors:
        lines.append(f"  note: {e}")
    lines.append(f"  cost: {result.cost.summary()}")
    return "\n".join(lines)


def _format_verdict(result) -> str:
    """The capture's kernel evidence alone through the attribution model: what the early warning
    would say of it (no traces, no calibration)."""
    from capture.attribution.engine import attribute_kernel

    verdict = attribute_kernel(result)
    if verdict.abstained:
        return f"  verdict (kernel evidence only): abstains: {verdict.abstain_reason}"
    top = verdict.hypotheses[0] if verdict.hypotheses else None
    why = ""
    if top and top.supporting:
        e = top.supporting[0]
        why = f" ({e.signal} {e.baseline:.3g} -> {e.incident:.3g})" if e.baseline is not None else f" ({e.signal})"
    return f"  verdict (kernel evidence only): {' + '.join(verdict.domains)}, score {verdict.confidence:.2f}{why}"


def cmd_capture(args: argparse.Namespace) -> int:
    from capture.probes import CATALOG
    from capture.schemas import CaptureRequest, RequestError

    if args.list_probes:
        for p in CATALOG.values():
            print(f"{p.name:16} {p.kind:10} cost {p.cost_class:6} budget {p.event_budget_per_s}/s  {p.summary}")
            print(f"{'':16} attach: {', '.join(p.attach)}")
        return 0
    if args.pid is None and args.cgroup is None and not args.pod and not args.container:
        raise CliError("capture: name a target with --pid PID, --cgroup PATH, --pod UID or --container ID "
                       "(or use --list-probes)")
    agent_url = args.agent or os.environ.get("LLMSLO_AGENT_URL")
    token = os.environ.get("LLMSLO_AGENT_TOKEN")
    if agent_url and not agent_url.startswith(("http://", "https://")):
        raise CliError(f"capture: --agent {agent_url!r} is not an http:// or https:// URL")
    # A running agent has its flight recorder's history to compare with; this process has none.
    baseline = args.baseline if args.baseline is not None else ("60s" if agent_url else "0s")
    probes = [p.strip() for p in args.probes.split(",") if p.strip()] if args.probes else list(CATALOG)
    target = {"pids": [args.pid] if args.pid is not None else [],
              "cgroups": [args.cgroup] if args.cgroup else [], "pods": args.pod or [],
              "containers": args.container or []}
    try:
        req = CaptureRequest.from_dict({"target": target, "probes": probes, "duration_s": args.duration,
                                        "baseline_s": baseline}, known_probes=list(CATALOG))
    except RequestError as e:
        raise CliError(f"capture: {e}") from None
    if agent_url and not token:
        raise CliError("capture: --agent needs the agent's bearer token in LLMSLO_AGENT_TOKEN")
    if not agent_url and req.baseline_s:
        raise CliError("capture: --baseline needs --agent (a running agent's flight recorder holds the baseline)")
    if not agent_url and os.geteuid() != 0:
        raise CliError("capture: loading eBPF programs needs root (CAP_BPF and CAP_PERFMON); "
                       "or send it to a running agent with --agent URL")

    from capture.agent import CaptureAgent
    from capture.client import AgentError, HttpAgentClient

    async def run():
        if agent_url:
            client = HttpAgentClient(agent_url, token or "")
            try:
                return await client.capture(req)
            finally:
                await client.close()
        return await CaptureAgent(recorder=False).capture(req)

    try:
        result = asyncio.run(run())
    except RequestError as e:
        raise CliError(f"capture: {e}") from None
    except AgentError as e:
        raise CliError(f"capture: {e} ({agent_url})") from None
    print(json.dumps(result.to_dict(), indent=2) if args.json else _format_capture(result) + "\n" + _format_verdict(result))
    return 0 if not any(r.error for r in result.incident.values()) else 1


# --- playbooks validate ------------------------------------------------------------------------
def cmd_playbooks_validate(args: argparse.Namespace) -> int:
    from capture.probes import CATALOG
    from responder.config import REPO_ROOT
    from responder.playbooks import validate_directory

    directory = Path(args.dir) if args.dir else Path(os.environ.get("LLMSLO_PLAYBOOKS_DIR") or REPO_ROOT / "playbooks")
    if not directory.is_dir():
        raise CliError(f"playbooks validate: {directory} is not a directory")
    problems = validate_directory(directory, set(CATALOG))
    for p in problems:
        print(p.format())
    if problems:
        print(f"{len(problems)} problem(s) in {directory}", file=sys.stderr)
        return 1
    print(f"{directory}: ok")
    return 0


# --- replay ------------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    import aiohttp

    from responder.http.alertmanager import PayloadError, parse_notification

    try:
        body = Path(args.file).read_bytes()
    except OSError as e:
        raise CliError(f"replay: cannot read {args.file}: {e.strerror}") from None
    try:
        parse_notification(body)
    except PayloadError as e:
        raise CliError(f"replay: {args.file} is not a valid Alertmanager payload: {e}") from None
    token = args.token or os.environ.get("LLMSLO_WEBHOOK_TOKEN")
    user, password = os.environ.get("LLMSLO_WEBHOOK_USER"), os.environ.get("LLMSLO_WEBHOOK_PASSWORD")
    headers = {"Content-Type": "application/json"}
    auth = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        auth = aiohttp.BasicAuth(user, password)
    else:
        raise CliError("replay: set LLMSLO_WEBHOOK_TOKEN (or --token), or LLMSLO_WEBHOOK_USER/PASSWORD")

    async def send():
        async with aiohttp.ClientSession() as s:
            async with s.post(args.url.rstrip("/") + "/webhook/alertmanager", data=body, headers=headers,
                              auth=auth, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                return resp.status, await resp.text()

    try:
        status, text = asyncio.run(send())
    except (aiohttp.ClientError, TimeoutError) as e:
        raise CliError(f"replay: cannot reach {args.url}: {e}") from None
    print(f"{status} {text}")
    return 0 if status < 300 else 1


# --- rules generate ------------------------------------------------------------------------------
def _rules_duration(text: str, flag: str) -> float:
    from responder.playbooks import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise CliError(f"rules generate: {flag}: {e}") from None
    if seconds <= 0:
        raise CliError(f"rules generate: {flag} must be longer than zero, got {text!r}")
    return seconds


def _rules_objective(text: str, flag: str) -> float:
    """``99.5``, ``99.5%`` or ``0.995`` all mean 99.5%: a value of 1 or more is a percentage."""
    body = text.strip()
    percent = body.endswith("%")
    try:
        value = float(body.removesuffix("%"))
    except ValueError:
        raise CliError(f"rules generate: {flag} expects a percentage like 99.5 or 99.5%, got {text!r}") from None
    return value / 100 if percent or value >= 1 else value


def _rules_scale(text: str) -> float:
    """``0.25`` or a fraction like ``1/240``."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise CliError(f"rules generate: --window-scale expects a number in (0, 1] such as 0.25 or 1/240, "
                       f"got {text!r}") from None


def _write_atomically(path: Path, text: str) -> None:
    # A half-written rule file would be loaded by a Prometheus watching the directory.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CliError(f"rules generate: cannot write {path}: {e.strerror}") from None


# The Prometheus Operator's object for a rule file (deploy/prometheus/ holds the rendered one).
PROMETHEUS_RULE_HEAD = """\
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: llm-slo
  labels:
    app.kubernetes.io/name: llmslo
    app.kubernetes.io/component: slo-rules
spec:
"""


def _prometheus_rule(rule_file: str, header: list[str]) -> str:
    """A rule file's groups as a PrometheusRule's ``spec``. The dumped text is indented rather
    than dumped again, so the PromQL keeps its literal blocks. Namespace and the labels a
    Prometheus's ruleSelector wants are left to kustomize (deploy/prometheus/kustomization.yaml)."""
    body = "".join(f"  {line}" if line.strip() else line for line in rule_file.splitlines(keepends=True))
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header)
    return comments + PROMETHEUS_RULE_HEAD + body


def cmd_rules_generate(args: argparse.Namespace) -> int:
    from responder.slo.rules import RulesError, SloRulesSpec, describe, render_rules

    group_by = tuple(label.strip() for label in (args.group_by or "").split(",") if label.strip())
    try:
        spec = SloRulesSpec(
            objective_errors=_rules_objective(args.objective_errors, "--objective-errors"),
            objective_ttft=_rules_objective(args.objective_ttft, "--objective-ttft"),
            objective_latency=_rules_objective(args.objective_latency, "--objective-latency"),
            ttft_threshold_s=_rules_duration(args.ttft_threshold, "--ttft-threshold"),
            latency_threshold_s=_rules_duration(args.latency_threshold, "--latency-threshold"),
            error_codes=args.error_codes, requests_metric=args.requests_metric, ttft_metric=args.ttft_metric,
            latency_metric=args.latency_metric, service_label=args.service_label, extra_group_labels=group_by,
            window_scale=_rules_scale(args.window_scale),
            scrape_interval_s=_rules_duration(args.scrape_interval, "--scrape-interval"),
            group_interval_s=(_rules_duration(args.evaluation_interval, "--evaluation-interval")
                              if args.evaluation_interval else None),
            runbook_url=args.runbook_url or None, early_warning=not args.no_early_warning)
    except RulesError as e:
        raise CliError(f"rules generate: {e}") from None
    if args.format == "prometheus-rule":
        header = [*describe(spec), f"As a PrometheusRule (--format prometheus-rule); alerts carry the labels "
                                   f"{', '.join(spec.group_labels)} (--service-label, --group-by)."]
        text = _prometheus_rule(render_rules(spec), header=header)
    else:
        text = render_rules(spec, header=describe(spec))
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    _write_atomically(Path(args.output), text)
    print(f"llmslo: wrote {args.output}", file=sys.stderr)
    return 0


# --- dead -------------------------------------------------------------------------------------
def _open_store(args: argparse.Namespace):
    """The store ``llmslo serve`` with the same settings uses (config file and LLMSLO_* variables)."""
    from responder import config
    from responder.store import open_store
    from responder.store.base import StoreError

    try:
        settings = config.load(args.config)
    except config.ConfigError as e:
        raise CliError(f"configuration: {e}") from None
    if not settings.database_url and not settings.store_path.is_file():
        raise CliError(f"no incident store at {settings.store_path}; set LLMSLO_DATA_DIR (or --config) as for "
                       "llmslo serve")
    try:
        return open_store(settings.database_url, settings.store_path)
    except StoreError as e:
        raise CliError(f"the incident store did not open: {e}") from None


def cmd_dead(args: argparse.Namespace) -> int:
    """List or retry what the responder gave up on: chat messages (dead) and jobs (failed for good)."""
    from responder.store.base import NotFound, StoreError

    store = _open_store(args)
    try:
        if args.dead_command == "list":
            messages, jobs = store.dead_messages(args.limit), store.dead_jobs(args.limit)
            if args.json:
                print(json.dumps({"messages": [{"id": m.id, "incident_id": m.incident_id, "sink": m.sink,
                                                "step": m.step, "attempts": m.attempts, "error": m.last_error}
                                               for m in messages],
                                  "jobs": [{"id": j.id, "incident_id": j.incident_id, "kind": j.kind,
                                            "attempts": j.attempts, "error": j.last_error} for j in jobs]}, indent=2))
                return 0
            print(f"dead messages: {len(messages)}")
            for m in messages:
                print(f"  message {m.id}  {m.incident_id}  {m.sink}/{m.step}  after {m.attempts} attempt(s): "
                      f"{(m.last_error or '')[:200]}")
            print(f"dead jobs: {len(jobs)}")
            for j in jobs:
                print(f"  job {j.id}  {j.incident_id}  {j.kind}  after {j.attempts} attempt(s): "
                      f"{(j.last_error or '')[:200]}")
            return 0
        # retry
        if args.all:
            ms = [m.id for m in store.dead_messages(10_000)]
            js = [j.id for j in store.dead_jobs(10_000)]
        elif args.what == "message":
            ms, js = [args.id], []
        else:
            ms, js = [], [args.id]
        done = 0
        for mid in ms:
            if store.retry_message(mid):
                done += 1
            elif not args.all:
                raise CliError(f"dead retry: message {mid} is not dead")
        for jid in js:
            if store.retry_job(jid):
                done += 1
            elif not args.all:
                raise CliError(f"dead retry: job {jid} is not dead")
        print(f"llmslo: {done} queued again; a running responder picks them up within seconds")
        return 0
    except NotFound as e:
        raise CliError(f"dead retry: {e}") from None
    except StoreError as e:
        raise CliError(f"the incident store: {e}") from None
    finally:
        store.close()


# --- commands of other installed packages ----------------------------------------------------
PLUGIN_GROUP = "llmslo.commands"


def plugin_commands() -> dict[str, metadata.EntryPoint]:
    """``llmslo NAME ...`` for every command an installed package registers under the
    ``llmslo.commands`` entry-point group (the lab registers ``lab``). The product names none of
    them: they are found, and loaded only when asked for."""
    return {ep.name: ep for ep in metadata.entry_points(group=PLUGIN_GROUP)}


def run_plugin(ep: metadata.EntryPoint, argv: list[str]) -> int:
    # The command has its own parser; everything after its name is its own, options included.
    return ep.load()(argv)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (``llmslo: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        if len(text) > 300:
            text = text[:300] + "…"
        where = self.prog.removeprefix('llmslo').strip()
        self.exit(EXIT_USAGE, f"llmslo: {where + ': ' if where else ''}{text} (see {self.prog} --help)\n")


def build_parser(plugins: dict[str, metadata.EntryPoint] | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog="llmslo", description="LLM SLO incident responder with eBPF evidence")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the responder (embedded defaults, no config file needed)")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--config", help="YAML settings file (LLMSLO_* variables override it)")
    s.set_defaults(func=cmd_serve)

    a = sub.add_parser("agent", help="run a capture agent with its HTTP API")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8081)
    a.add_argument("--node-name", default=None)
    a.add_argument("--no-recorder", action="store_true", help="do not keep the always-on flight recorder")
    a.add_argument("--recorder-interval-s", type=_positive_float, default=5.0,
                   help="flight recorder sampling interval (default 5)")
    a.add_argument("--recorder-history-s", type=_positive_float, default=900.0,
                   help="how far back the flight recorder reaches (default 900 = 15 min)")
    a.add_argument("--no-early-warning", action="store_true",
                   help="do not score workloads continuously (the kernel early warning on /metrics)")
    a.add_argument("--early-warning-cgroup", action="append", default=[], metavar="PATTERN",
                   help="on a plain host, a shell pattern of cgroup paths to score as workloads besides pods and "
                        "containers, e.g. '/system.slice/*.service'; repeatable")
    a.set_defaults(func=cmd_agent)

    c = sub.add_parser("capture", help="an ad hoc capture from this terminal")
    c.add_argument("--pid", type=int)
    c.add_argument("--cgroup", help="cgroup path in the unified hierarchy, e.g. /system.slice/x.service")
    c.add_argument("--pod", action="append", metavar="UID",
                   help="a pod on this node by its UID (kubectl get pod -o jsonpath='{.metadata.uid}'); repeatable")
    c.add_argument("--container", action="append", metavar="ID",
                   help="a container on this node by its id (containerd://..., the bare id, or a unique prefix of 12+ "
                        "hex digits as podman ps prints it); repeatable")
    c.add_argument("--probes", help="comma-separated probe names (default: all)")
    c.add_argument("--duration", default="10s", help="e.g. 10s, 500ms, 1m (max 120s)")
    c.add_argument("--agent", metavar="URL",
                   help="send the capture to a running agent's API (default $LLMSLO_AGENT_URL; its token in "
                        "$LLMSLO_AGENT_TOKEN) instead of loading the probes in this process")
    c.add_argument("--baseline", default=None,
                   help="how much of the agent's flight recorder before the capture to compare with "
                        "(default 60s with --agent; none without)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--list-probes", action="store_true", help="list the probe catalog and exit")
    c.set_defaults(func=cmd_capture)

    pb = sub.add_parser("playbooks", help="playbook tools")
    pbs = pb.add_subparsers(dest="playbooks_command", required=True)
    v = pbs.add_parser("validate", help="check playbooks; errors with file:line")
    v.add_argument("dir", nargs="?")
    v.set_defaults(func=cmd_playbooks_validate)

    ru = sub.add_parser("rules", help="Prometheus rules for the LLM SLOs")
    rus = ru.add_subparsers(dest="rules_command", required=True)
    g = rus.add_parser("generate", help="print (or write) SLO recording and burn-rate alerting rules")
    g.add_argument("-o", "--output", help="rule file to write (default: stdout)")
    g.add_argument("--window-scale", default="1",
                   help="shrink every window and for: by this factor, e.g. 1/60 for a lab (default 1)")
    g.add_argument("--scrape-interval", default="15s",
                   help="the scrape interval; the scaled 5m window must hold 4 scrapes (default 15s)")
    g.add_argument("--evaluation-interval", help="rule group evaluation interval (default: Prometheus's global)")
    g.add_argument("--objective-errors", default="99.5", help="percent of requests not failing (default 99.5)")
    g.add_argument("--objective-ttft", default="99",
                   help="percent of requests with first token within --ttft-threshold (default 99)")
    g.add_argument("--objective-latency", default="99",
                   help="percent of requests completing within --latency-threshold (default 99)")
    g.add_argument("--ttft-threshold", default="2s", help="a bucket bound of the TTFT histogram (default 2s)")
    g.add_argument("--latency-threshold", default="10s",
                   help="a bucket bound of the request duration histogram (default 10s)")
    g.add_argument("--error-codes", default="5..|429", help="regex over the code label counted as errors")
    g.add_argument("--service-label", default="service", help="label naming the service (default service)")
    g.add_argument("--group-by", help="comma-separated extra labels to keep, e.g. region,model")
    g.add_argument("--requests-metric", default="llm_requests_total")
    g.add_argument("--ttft-metric", default="llm_time_to_first_token_seconds", help="histogram base name")
    g.add_argument("--latency-metric", default="llm_request_duration_seconds", help="histogram base name")
    g.add_argument("--runbook-url", help="runbook_url annotation; {slo}, {alertname}, {severity} are filled in")
    g.add_argument("--no-early-warning", action="store_true",
                   help="leave out the LLMKernelEarlyWarning alert on the capture agents' early warning")
    g.add_argument("--format", choices=("rules", "prometheus-rule"), default="rules",
                   help="a Prometheus rule file (default), or a PrometheusRule for the Prometheus Operator")
    g.set_defaults(func=cmd_rules_generate)

    d = sub.add_parser("dead", help="list or retry chat messages and jobs the responder gave up on")
    d.add_argument("--config", help="the YAML settings file llmslo serve uses (LLMSLO_* variables override it)")
    ds = d.add_subparsers(dest="dead_command", required=True)
    dl = ds.add_parser("list", help="dead messages and dead jobs, newest first, with why")
    dl.add_argument("--limit", type=_positive_int, default=100)
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(func=cmd_dead)
    dr = ds.add_parser("retry", help="queue a dead message or job again (a dead root takes its thread's replies)")
    dr.add_argument("what", nargs="?", choices=("message", "job"))
    dr.add_argument("id", nargs="?", type=_positive_int)
    dr.add_argument("--all", action="store_true", help="every dead message and job")
    dr.set_defaults(func=_dead_retry)

    r = sub.add_parser("replay", help="send a saved Alertmanager payload to a running responder")
    r.add_argument("file")
    r.add_argument("--url", default="http://127.0.0.1:8080")
    r.add_argument("--token", help="webhook bearer token (default: LLMSLO_WEBHOOK_TOKEN)")
    r.set_defaults(func=cmd_replay)

    for name, ep in sorted((plugin_commands() if plugins is None else plugins).items()):
        extra = sub.add_parser(name, add_help=False, help=f"from {ep.value.split(':')[0]} (llmslo {name} --help)")
        extra.add_argument("plugin_args", nargs=argparse.REMAINDER)
        extra.set_defaults(func=lambda args, ep=ep: run_plugin(ep, list(args.plugin_args)))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `llmslo [-v] lab ...`: everything after a plugin's name belongs to its own parser, options
    # included (argparse's REMAINDER would refuse a leading option such as --help).
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    plugins = plugin_commands()
    if command is not None and argv[command] in plugins:
        return run_plugin(plugins[argv[command]], argv[command + 1:])
    parser = build_parser(plugins)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"llmslo: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
