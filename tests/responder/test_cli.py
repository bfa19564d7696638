"""``llmslo`` as a user runs it (a subprocess), and ``responder.config.load``'s precedence and errors."""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from lab.harness import alert_payload
from responder import config
from responder.app import Responder

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
LABELS = {"alertname": "LLMTTFTBurnFast", "severity": "page", "pid": "1"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSLO_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "responder.cli", *args], cwd=REPO, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_usage_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("llmslo: "), p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- playbooks validate ----------------------------------------------------------------------

def test_playbooks_validate_shipped_dir():
    p = run("playbooks", "validate", str(REPO / "playbooks"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().endswith(": ok")


def test_playbooks_validate_default_dir_is_the_shipped_one():
    p = run("playbooks", "validate")
    assert p.returncode == 0, p.stdout + p.stderr
    assert str(REPO / "playbooks") in p.stdout


def test_playbooks_validate_broken_dir(tmp_path):
    (tmp_path / "a-bad-yaml.yaml").write_text("name: x\nmatch: [\n")
    (tmp_path / "b-bad-probe.yaml").write_text(
        "name: y\npriority: 1\nmatch: []\ncapture:\n  probes: [no_such_probe]\n  duration: 10s\n")
    (tmp_path / "c-good.yaml").write_text((REPO / "playbooks" / "fallback.yaml").read_text())
    p = run("playbooks", "validate", str(tmp_path))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, lines
    for line in lines:
        assert re.match(r"^.+\.yaml:\d+:\d+: \S", line), line
    assert lines[0].startswith(f"{tmp_path / 'a-bad-yaml.yaml'}:")
    assert lines[1].startswith(f"{tmp_path / 'b-bad-probe.yaml'}:5:")
    assert "no_such_probe" in lines[1]
    assert "2 problem(s)" in p.stderr


def test_playbooks_validate_missing_dir(tmp_path):
    p = run("playbooks", "validate", str(tmp_path / "nope"))
    assert_usage_error(p, "not a directory")


# --- capture: argument errors come before any eBPF -------------------------------------------

def test_capture_without_target():
    assert_usage_error(run("capture"), "--pid", "--cgroup")


@pytest.mark.parametrize("args, words", [
    (["--duration", "500s", "--pid", "1"], ["duration", "500s"]),
    (["--duration", "0.5s", "--pid", "1"], ["duration"]),
    (["--duration", "ten", "--pid", "1"], ["duration", "ten"]),
    (["--probes", "nope", "--pid", "1"], ["nope"]),
    (["--probes", "tcp_retrans,nope", "--pid", "1"], ["nope"]),
    (["--pid", "0"], ["pids"]),
    (["--cgroup", "/a/../b"], ["cgroup"]),
    (["--pod", "chat-7d9f-x2k"], ["not a pod UID"]),
    (["--container", "containerd://xyz"], ["not a container id"]),
    (["--pod", "00000000-0000-4000-8000-000000000000", "--probes", "tcp_connect", "--duration", "1s"],
     ["has no cgroup on this node"]),
    (["--pid", "1", "--agent", "127.0.0.1:8081"], ["--agent", "not an http"]),
    (["--pid", "1", "--baseline", "30s"], ["--baseline needs --agent"]),
    (["--pid", "1", "--agent", "http://127.0.0.1:1", "--baseline", "2h"], ["baseline_s"]),
], ids=["too-long", "too-short", "not-a-duration", "unknown-probe", "one-unknown-probe", "pid-0", "cgroup-dotdot",
        "pod-name-not-uid", "bad-container-id", "pod-not-here", "agent-not-a-url", "baseline-without-agent",
        "baseline-too-long"])
@pytest.mark.slow
def test_capture_bad_arguments(args, words):
    assert_usage_error(run("capture", *args), *words)


def test_capture_through_an_agent_needs_its_token():
    assert_usage_error(run("capture", "--pid", "1", "--agent", "http://127.0.0.1:9"), "LLMSLO_AGENT_TOKEN")


def test_capture_through_an_agent_that_is_not_there_says_so():
    url = f"http://127.0.0.1:{closed_port()}"
    p = run("capture", "--pid", "1", "--duration", "1s", "--agent", url,
            env=clean_env() | {"LLMSLO_AGENT_TOKEN": "t"})
    assert_usage_error(p, "could not be reached", url)


def test_capture_list_probes():
    p = run("capture", "--list-probes")
    assert p.returncode == 0, p.stderr
    for name in ("tcp_retrans", "tcp_connect", "runq_latency"):
        assert re.search(rf"^{name}\s", p.stdout, re.M), p.stdout


def test_argparse_errors_exit_2():
    p = run("capture", "--pid", "notanumber")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = run("no-such-command")
    assert p.returncode == 2 and "Traceback" not in p.stderr


# --- replay ----------------------------------------------------------------------------------

def write_payload(tmp_path: Path, **over) -> Path:
    body = alert_payload("firing", LABELS, time.time() - 60)
    body["notification_reason"] = "new_alerts"
    body.update(over)
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(body))
    return path


def test_replay_missing_file(tmp_path):
    p = run("replay", str(tmp_path / "missing.json"), env=clean_env(LLMSLO_WEBHOOK_TOKEN="t"))
    assert_usage_error(p, "cannot read", "missing.json")


@pytest.mark.parametrize("content, words", [
    (json.dumps({**alert_payload("firing", LABELS, 1.7e9), "version": "3"}), ["version", '"3"']),
    ("{not json", ["invalid JSON"]),
    (json.dumps({k: v for k, v in alert_payload("firing", LABELS, 1.7e9).items() if k != "groupKey"}),
     ["groupKey"]),
], ids=["version-3", "not-json", "no-groupKey"])
@pytest.mark.slow
def test_replay_invalid_payload(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    p = run("replay", str(path), env=clean_env(LLMSLO_WEBHOOK_TOKEN="t"))
    assert_usage_error(p, "not a valid Alertmanager payload", *words)


def test_replay_without_credentials(tmp_path):
    p = run("replay", str(write_payload(tmp_path)))
    assert_usage_error(p, "LLMSLO_WEBHOOK_TOKEN")


def test_replay_unreachable(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    p = run("replay", str(write_payload(tmp_path)), "--url", url, env=clean_env(LLMSLO_WEBHOOK_TOKEN="t"))
    assert_usage_error(p, "cannot reach", url)


async def _arun(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The CLI as a subprocess without blocking the event loop the responder serves on."""
    proc = await asyncio.create_subprocess_exec(PYTHON, "-m", "responder.cli", *args, cwd=REPO, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def responder_server(tmp_path):
    settings = config.load(env={}, data_dir=tmp_path / "data", webhook_token="t0ken",
                           agent_url=f"http://127.0.0.1:{closed_port()}", agent_token="x",
                           playbooks_dir=REPO / "playbooks")
    responder = Responder.build(settings, console_stream=io.StringIO())
    server = TestServer(responder.app(), host="127.0.0.1")
    await server.start_server()
    yield responder, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.mark.slow
async def test_replay_to_a_running_responder(tmp_path, responder_server):
    responder, url = responder_server
    path = write_payload(tmp_path)

    # Wrong token: the responder's 401 is printed, exit 1.
    rc, out, err = await _arun("replay", str(path), "--url", url, env=clean_env(LLMSLO_WEBHOOK_TOKEN="wrong"))
    assert rc == 1, (out, err)
    assert out.startswith("401 ")
    assert responder.store.list_incidents() == []

    rc, out, err = await _arun("replay", str(path), "--url", url, env=clean_env(LLMSLO_WEBHOOK_TOKEN="t0ken"))
    assert rc == 0, (out, err)
    assert out.startswith("200 ")
    answer = json.loads(out.split(" ", 1)[1])
    assert answer["status"] == "accepted" and answer["new_alerts"] == 1
    incidents = responder.store.list_incidents()
    assert [i.id for i in incidents] == [answer["incident_id"]]

    # --token wins over the environment; the same file again is a duplicate.
    rc, out, err = await _arun("replay", str(path), "--url", url + "/", "--token", "t0ken",
                               env=clean_env(LLMSLO_WEBHOOK_TOKEN="wrong"))
    assert rc == 0, (out, err)
    again = json.loads(out.split(" ", 1)[1])
    assert again["incident_id"] == answer["incident_id"] and again["duplicates"] == 1


@pytest.mark.slow
async def test_replay_with_basic_auth(tmp_path):
    settings = config.load(env={}, data_dir=tmp_path / "data", webhook_user="am", webhook_password="pw",
                           agent_url=f"http://127.0.0.1:{closed_port()}", agent_token="x",
                           playbooks_dir=REPO / "playbooks")
    responder = Responder.build(settings, console_stream=io.StringIO())
    server = TestServer(responder.app(), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        path = write_payload(tmp_path)
        rc, out, err = await _arun("replay", str(path), "--url", url,
                                   env=clean_env(LLMSLO_WEBHOOK_USER="am", LLMSLO_WEBHOOK_PASSWORD="pw"))
        assert rc == 0 and out.startswith("200 "), (out, err)
        rc, out, err = await _arun("replay", str(path), "--url", url,
                                   env=clean_env(LLMSLO_WEBHOOK_USER="am", LLMSLO_WEBHOOK_PASSWORD="no"))
        assert rc == 1 and out.startswith("401 "), (out, err)
    finally:
        await server.close()


# --- serve: configuration errors before anything starts --------------------------------------

@pytest.mark.slow
def test_serve_config_unknown_key(tmp_path):
    cfg = tmp_path / "llmslo.yaml"
    cfg.write_text("port: 9090\nwebhok_token: oops\n")
    p = run("serve", "--config", str(cfg))
    assert_usage_error(p, "configuration", "webhok_token", "unknown setting")


@pytest.mark.parametrize("content, words", [
    ("port: 70000\n", ["port", "70000"]),
    ("max_body_bytes: lots\n", ["max_body_bytes", "lots"]),
    ("agent_url: ftp://agent\nagent_token: x\n", ["agent_url"]),
    ("port: [\n", ["not valid YAML"]),
    ("- a\n- b\n", ["mapping"]),
], ids=["port-range", "not-an-int", "not-http", "bad-yaml", "not-a-mapping"])
@pytest.mark.slow
def test_serve_config_bad_values(tmp_path, content, words):
    cfg = tmp_path / "llmslo.yaml"
    cfg.write_text(content)
    assert_usage_error(run("serve", "--config", str(cfg)), "configuration", *words)


@pytest.mark.slow
def test_serve_config_missing_file(tmp_path):
    assert_usage_error(run("serve", "--config", str(tmp_path / "nope.yaml")), "configuration", "nope.yaml")


@pytest.mark.slow
def test_serve_bad_env_value_is_named(tmp_path):
    p = run("serve", "--port", str(closed_port()), env=clean_env(LLMSLO_MAX_BODY_BYTES="big"))
    assert_usage_error(p, "max_body_bytes")


# --- config.load -----------------------------------------------------------------------------

def test_defaults():
    s = config.load(env={})
    assert s.host == "127.0.0.1" and s.port == 8080
    assert s.max_body_bytes == 16 * 1024 * 1024  # a 10,000-alert notification (about 4 MB) fits
    assert s.webhook_token is None and s.agent_url is None
    assert s.playbooks_dir == config.REPO_ROOT / "playbooks"
    assert s.base_url == "http://127.0.0.1:8080"


def test_env_beats_file_beats_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_body_bytes: 2048\nslack_channel: '#from-file'\nwebhook_token: file-token\n"
                   "port: 9000\nrecorder_interval_s: 2.5\n")
    s = config.load(cfg, env={})
    assert (s.max_body_bytes, s.slack_channel, s.webhook_token, s.port) == (2048, "#from-file", "file-token", 9000)
    assert s.recorder_interval_s == 2.5
    assert s.host == "127.0.0.1"  # not in the file: the default
    env = {"LLMSLO_MAX_BODY_BYTES": "8192", "LLMSLO_SLACK_CHANNEL": "#from-env",
           "LLMSLO_DATA_DIR": str(tmp_path / "d"), "LLMSLO_WEBHOOK_TOKEN": ""}  # empty: unset
    s = config.load(cfg, env=env)
    assert s.max_body_bytes == 8192 and isinstance(s.max_body_bytes, int)
    assert s.slack_channel == "#from-env"
    assert s.data_dir == tmp_path / "d" and isinstance(s.data_dir, Path)
    assert s.store_path == tmp_path / "d" / "incidents.sqlite3"
    assert s.webhook_token == "file-token"
    assert s.port == 9000


def test_overrides_beat_env_and_none_overrides_are_ignored(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("host: 10.0.0.1\nport: 9000\n")
    s = config.load(cfg, env={"LLMSLO_WEBHOOK_TOKEN": "env"}, host="0.0.0.0", port=None, webhook_token="flag")
    assert (s.host, s.port, s.webhook_token) == ("0.0.0.0", 9000, "flag")


def test_empty_file_is_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("")
    assert config.load(cfg, env={}).port == 8080


@pytest.mark.parametrize("kwargs, key", [
    (dict(env={"LLMSLO_MAX_BODY_BYTES": "lots"}), "max_body_bytes"),
    (dict(env={"LLMSLO_MAX_BODY_BYTES": "100"}), "max_body_bytes"),
    (dict(env={"LLMSLO_RECORDER_INTERVAL_S": "soon"}), "recorder_interval_s"),
    (dict(env={"LLMSLO_RECORDER_INTERVAL_S": "0"}), "recorder_interval_s"),
    (dict(env={"LLMSLO_AGENT_URL": "agent:8081", "LLMSLO_AGENT_TOKEN": "x"}), "agent_url"),
    (dict(env={"LLMSLO_AGENT_URL": "http://agent:8081"}), "agent_token"),
    (dict(env={"LLMSLO_AGENT_DISCOVERY": "dns"}), "agent_discovery"),
    (dict(env={"LLMSLO_AGENT_DISCOVERY": "kubernetes"}), "agent_token"),
    (dict(env={"LLMSLO_AGENT_DISCOVERY": "kubernetes", "LLMSLO_AGENT_TOKEN": "x",
               "LLMSLO_AGENT_URL": "http://agent:8081"}), "agent_url"),
    (dict(env={"LLMSLO_AGENT_DISCOVERY": "kubernetes", "LLMSLO_AGENT_TOKEN": "x",
               "LLMSLO_AGENT_SELECTOR": "app.kubernetes.io/name"}), "agent_selector"),
    (dict(env={"LLMSLO_AGENT_PORT": "0"}), "agent_port"),
    (dict(env={"LLMSLO_KUBE_API_URL": "kubernetes.default.svc"}), "kube_api_url"),
    (dict(env={"LLMSLO_SLACK_API_URL": "slack.com/api"}), "slack_api_url"),
    (dict(env={"LLMSLO_PROMETHEUS_URL": "file:///etc/passwd"}), "prometheus_url"),
    (dict(env={"LLMSLO_PUBLIC_URL": "ldap://x"}), "public_url"),
    (dict(env={"LLMSLO_WEBHOOK_USER": "am"}), "webhook_user"),
    (dict(env={"LLMSLO_WEBHOOK_PASSWORD": "pw"}), "webhook_password"),
    (dict(env={"LLMSLO_PLAYBOOKS_DIR": "/no/such/dir"}), "playbooks_dir"),
    (dict(env={}, port=0), "port"),
    (dict(env={}, port=65536), "port"),
    (dict(env={}, port=True), "port"),
    (dict(env={}, port="http"), "port"),
    (dict(env={}, workers=0), "workers"),
    (dict(env={}, workers=65), "workers"),
])
def test_bad_values_name_their_key(kwargs, key):
    with pytest.raises(config.ConfigError) as e:
        config.load(**kwargs)
    assert key in str(e.value)


@pytest.mark.parametrize("content, key", [
    ("webhook_tokn: x\n", "webhook_tokn"),
    ("generated_token: true\n", "generated_token"),
    ("max_body_bytes: 1k\n", "max_body_bytes"),
    ("workers: 2.5\n", "workers"),
    ("port: 99999\n", "port"),
])
def test_bad_file_values_name_their_key(tmp_path, content, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    with pytest.raises(config.ConfigError) as e:
        config.load(cfg, env={})
    assert str(e.value).startswith(key), str(e.value)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(config.ConfigError, match="nope.yaml"):
        config.load(tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad, env={})


def test_ensure_webhook_token():
    s = config.load(env={})
    config.ensure_webhook_token(s)
    assert s.generated_token and s.webhook_token and len(s.webhook_token) >= 24
    s = config.load(env={"LLMSLO_WEBHOOK_TOKEN": "mine"})
    config.ensure_webhook_token(s)
    assert s.webhook_token == "mine" and not s.generated_token
    s = config.load(env={"LLMSLO_WEBHOOK_USER": "am", "LLMSLO_WEBHOOK_PASSWORD": "pw"})
    config.ensure_webhook_token(s)
    assert s.webhook_token is None and not s.generated_token


@pytest.mark.slow
def test_agent_refuses_a_broken_kubernetes_configuration():
    p = run("agent", "--port", "0", env=clean_env() | {"KUBECONFIG": "/nonexistent/kubeconfig",
                                                       "LLMSLO_AGENT_TOKEN": "t"})
    assert_usage_error(p, "Kubernetes API configuration")


@pytest.mark.slow
def test_serve_refuses_a_broken_kubernetes_configuration(tmp_path):
    p = run("serve", "--port", "1", env=clean_env(LLMSLO_AGENT_DISCOVERY="kubernetes", LLMSLO_AGENT_TOKEN="t",
                                                 LLMSLO_KUBECONFIG="/nonexistent/kubeconfig",
                                                 LLMSLO_DATA_DIR=str(tmp_path / "data")))
    assert_usage_error(p, "Kubernetes API configuration")
