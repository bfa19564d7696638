"""deploy/alertmanager-receiver.yaml: a valid Alertmanager configuration (amtool) that routes
every generated burn alert to the responder's Service, with the bearer token the responder
checks, read from where an operator-managed Alertmanager mounts that Secret."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from responder.playbooks.matchers import matches, parse_matcher
from responder.slo.rules import ALERT_NAMES
from tests.deploy.conftest import DEPLOY, REPO, registered_routes, rendered

RECEIVER = DEPLOY / "alertmanager-receiver.yaml"


def snippet() -> dict:
    return yaml.safe_load(RECEIVER.read_text())


def webhook() -> dict:
    [receiver] = snippet()["receivers"]
    [config] = receiver["webhook_configs"]
    return config


def test_receiver_posts_to_the_responders_service():
    m = rendered("overlays/single")
    svc = m.one("Service", "llmslo-responder")
    [port] = svc["spec"]["ports"]
    path = "/webhook/alertmanager"
    assert path in registered_routes(REPO / "responder" / "http" / "api.py", "post")
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    assert webhook()["url"] == f"http://{host}:{port['port']}{path}"
    assert webhook()["send_resolved"] is True


def test_receiver_sends_the_token_the_responder_checks():
    auth = webhook()["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and "credentials" not in auth
    m = rendered("overlays/single")
    secret, key = m.env(m.responder)["LLMSLO_WEBHOOK_TOKEN"].secret
    assert auth["credentials_file"] == f"/etc/alertmanager/secrets/{secret}/{key}"


def test_route_sends_every_burn_alert_and_nothing_else():
    [route] = snippet()["route"]["routes"]
    assert route["receiver"] == "llmslo"
    found = [parse_matcher(text) for text in route["matchers"]]
    for name in ALERT_NAMES.values():
        assert matches(found, {"alertname": name}), name
    assert not matches(found, {"alertname": "KubePodCrashLooping"})


@pytest.mark.needs_prometheus
def test_amtool_accepts_the_receiver_in_a_whole_configuration(tmp_path):
    s = snippet()
    whole = {"route": {"receiver": "default", **s["route"]}, "receivers": [{"name": "default"}, *s["receivers"]]}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(whole))
    p = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout and "2 receivers" in p.stdout, p.stdout
